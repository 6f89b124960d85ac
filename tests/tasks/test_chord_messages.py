"""The template publisher sends, field by field, what Celery's own `chord.apply_async` sends.

SPEC §2 allows building the chord's messages without Celery's per-signature machinery only with
this proof, on the pinned Celery version: every header message (body, headers, properties, group
index, order) and the chord counter, compared after mapping each generated id to its role.
Both publishes run in a subprocess on a broker no worker consumes (its own Redis, or its own
RabbitMQ vhost), configured from the environment as in production.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from kombu.exceptions import OperationalError

from payouts_devstack import Stack
from payouts_devstack.rabbitmq import unavailable_reason
from payouts_tasks.chord_messages import PublisherConfirms

# Ids with every character class an id may hold (SPEC §9), and one long enough that Celery's
# argsrepr is truncated (the template then asks saferepr itself).
IDS = [("acme", "batch-1"), ("cli:ent/ção", "b:1 'q' \"dq\" \\ 😀 %2F"), ("c", "x" * 1500)]


def capture(env: dict, client: str, batch_id: str, total: int, in_task: bool = False) -> dict:
    argv = [sys.executable, "-m", "tests.tasks.chord_capture", client, batch_id, str(total)]
    done = subprocess.run(argv + (["--in-task"] if in_task else []), env=env, capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def by_role(messages: list[dict], result_id: str) -> list[dict]:
    """The messages with each generated id replaced by its role, after checking the relations
    between them (one group, one body, a distinct task id per message)."""
    [group] = {m["headers"]["group"] for m in messages}
    ids = [m["headers"]["id"] for m in messages]
    assert len(set(ids)) == len(ids)
    text = json.dumps(messages)
    for i, task_id in enumerate(ids):
        text = text.replace(task_id, f"<task {i}>")
    return json.loads(text.replace(group, "<group>").replace(result_id, "<chord result>"))


def assert_same_chord(out: dict, total: int) -> None:
    celery = by_role(out["celery"], out["celery_result"])
    template = by_role(out["template"], out["template_result"])
    assert len(celery) == len(template) == total
    for i, (expected, got) in enumerate(zip(celery, template, strict=True)):
        assert got == expected, f"message {i} differs"
        assert got["headers"]["group_index"] == i  # published in submission order
    assert out["template_keys"] == out["celery_keys"]
    assert out["celery_keys"]["s"] == [str(total), True]  # chord size, expiring


@pytest.fixture(scope="module")
def redis_stack(tmp_path_factory):
    with Stack(tmp_path_factory.mktemp("chord-redis")) as stack:
        stack.start_redis()
        yield stack


@pytest.mark.parametrize(("client", "batch_id"), IDS)
def test_template_messages_equal_celerys_on_redis(redis_stack, client, batch_id):
    assert_same_chord(capture(redis_stack.env, client, batch_id, 5), 5)


def test_template_messages_equal_celerys_inside_the_publish_task(redis_stack):
    """In the worker the publish task is the parent: parent_id and root_id come from it."""
    out = capture(redis_stack.env, "acme", "in-task", 3, in_task=True)

    assert_same_chord(out, 3)
    assert {m["headers"]["parent_id"] for m in out["template"]} == {"publish-task-id"}
    assert {m["headers"]["root_id"] for m in out["template"]} == {"root-task-id"}


def test_a_large_chord_is_equal_message_for_message(redis_stack):
    assert_same_chord(capture(redis_stack.env, "acme", "large", 1200), 1200)  # > one flush


def test_a_large_chord_lets_a_gevent_workers_other_greenlets_run_while_it_is_published(redis_stack):
    """A 10,000-message chord is seconds of one worker's CPU: published in one stretch, every
    settle greenlet of that process (any client's) waited for it (loop lag up to 5-10 s,
    docs/BENCHMARKS.md "Loop lag"). The publisher yields at least every 50 messages."""
    argv = [sys.executable, "-m", "tests.tasks.chord_capture", "acme", "yields", "2000", "--gevent"]
    done = subprocess.run(argv, env=redis_stack.env, capture_output=True, text=True, timeout=120,
                          check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout)

    assert out["sent"] == 2000
    assert out["points"] >= 2000 // 50 - 1, out  # every 50 messages, not only at its 4 flushes


@pytest.mark.skipif(bool(unavailable_reason()), reason=unavailable_reason() or "")
def test_template_messages_equal_celerys_on_rabbitmq(tmp_path):
    with Stack(tmp_path) as stack:
        stack.start_redis()
        stack.use_rabbitmq()
        assert_same_chord(capture(stack.env, "cli:ent", "b/1", 5), 5)
        # Confirms awaited together: every message of a large chord arrives, in order.
        assert_same_chord(capture(stack.env, "acme", "large", 1200), 1200)


class FakeChannel:
    """What PublisherConfirms touches of a py-amqp channel: confirm mode, raw publish, ack events."""

    def __init__(self):
        self.events = {"basic_ack": set(), "basic_nack": set()}
        self.selected = False

    def confirm_select(self):
        self.selected = True

    def _basic_publish(self, *args, **kwargs):
        return None


def test_confirms_count_single_multiple_and_out_of_order_acks():
    channel = FakeChannel()
    confirms = PublisherConfirms(channel)
    for _ in range(10):
        channel.basic_publish("message", exchange="", routing_key="celery", confirm_timeout=5)
    [ack] = channel.events["basic_ack"]

    for tag, multiple in [(2, False), (5, False), (4, True), (4, False), (9, False), (8, True)]:
        ack(tag, multiple)
    assert (confirms.sent, confirms.confirmed) == (10, 9)  # 1-8 and 9; 10 is still out
    ack(10, False)
    assert confirms.confirmed == 10
    confirms.wait(timeout=0.1)  # returns at once: nothing left to wait for


def test_a_refused_or_unconfirmed_chord_raises_so_the_publish_task_retries():
    channel = FakeChannel()
    confirms = PublisherConfirms(channel)
    channel.basic_publish("message")
    [nack] = channel.events["basic_nack"]
    nack(1, False)
    with pytest.raises(OperationalError, match="refused"):
        confirms.wait(timeout=1)
