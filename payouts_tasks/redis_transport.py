"""kombu's Redis transport, except that a gevent worker also brings back a dead worker's messages.

kombu 5.7 restores unacknowledged messages older than the visibility timeout from a timer on the
event-loop path (prefork), but on the synchronous path Celery runs for gevent only after a poll
that saw no reply at all; BRPOP's 1 s timeout always replies first (an empty reply raises Empty),
so they never came back (measured: 376 messages still unacknowledged 150 s past the timeout).
Here every empty poll also tries a restore; kombu's mutex and `unacked_restore_throttle` bound it.
"""

from __future__ import annotations

from queue import Empty

from kombu.transport import redis


class _Poller(redis.MultiChannelPoller):
    def get(self, callback, timeout=None):
        try:
            return super().get(callback, timeout)
        except Empty:
            self.maybe_restore_messages()
            raise


class Transport(redis.Transport):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.cycle = _Poller()
