"""Celery's Redis result backend, minus the result subscriptions nobody here waits on.

Publishing a chord makes the stock backend subscribe the publisher to one pub/sub channel per
header task (measured: 2,000 channels for a 2,000-item batch) so that `.get()` could be fast.
No process of this service calls `.get()`: the API answers from the status key and the chord
counter lives in Redis. Without the subscriptions, publishing costs no extra round trips and
the API holds no per-item state. Consequence: `AsyncResult.get()` is not supported here.
"""

from celery.backends.redis import RedisBackend


class PublishOnlyRedisBackend(RedisBackend):
    def on_task_call(self, producer, task_id):
        return None

    def add_pending_result(self, result, weak=False, start_drainer=True):
        return result

    def add_pending_results(self, results, weak=False):
        return results

    def remove_pending_result(self, result):
        return result
