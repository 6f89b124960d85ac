"""Concurrent submissions: shared external_ids pay once; one batch_id gets one chord."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tests.faults.stack import BROKERS, items


@BROKERS
def test_twenty_concurrent_batches_sharing_external_ids(make_stack, broker):
    stack = make_stack(broker)
    stack.start_service()
    shared = items("shared", 10)
    batches = {f"race-{n}": shared + items(f"own{n}", 5) for n in range(20)}

    with ThreadPoolExecutor(max_workers=20) as pool:
        responses = list(pool.map(lambda kv: stack.post(*kv), batches.items()))

    assert [r.status_code for r in responses] == [202] * 20
    reports = stack.assert_exactly_once(list(batches))
    for n in range(10):
        outcomes = [r["details"][n]["status"] for r in reports]
        assert outcomes.count("paid") == 1 and outcomes.count("duplicate") == 19
    assert sum(r["successful"] for r in reports) == 10 + 20 * 5


@BROKERS
def test_one_batch_id_posted_concurrently(make_stack, broker):
    stack = make_stack(broker)
    worker = stack.start_service()
    same = items("same", 30)
    other = items("other", 30)

    with ThreadPoolExecutor(max_workers=16) as pool:
        identical = list(pool.map(lambda _: stack.post("contested", same), range(12)))
        mixed = list(pool.map(lambda i: stack.post("mixed", same if i % 2 else other), range(12)))

    codes = sorted(r.status_code for r in identical)
    assert codes == [200] * 11 + [202]
    winner = next(r for r in mixed if r.status_code == 202).json()["details"][0]["external_id"]
    for i, response in enumerate(mixed):
        payload_won = (same if i % 2 else other)[0]["external_id"] == winner
        assert response.status_code in ((200, 202) if payload_won else (409,))
    assert [r.status_code for r in mixed].count(202) == 1

    stack.assert_exactly_once(["contested", "mixed"])
    # One chord per batch_id: each item was settled by one task id. (A redelivery of the same
    # message under load reuses its task id; a second chord would bring new ones.)
    events = [json.loads(line) for line in Path(worker.log_path).read_text().splitlines()
              if line.startswith("{")]
    task_ids: dict[tuple, set] = {}
    for e in events:
        if e["message"] == "settle outcome":
            task_ids.setdefault((e["batch_id"], e["index"]), set()).add(e["task_id"])
    for batch_id in ("contested", "mixed"):
        for index in range(30):
            assert len(task_ids[(batch_id, index)]) == 1, (batch_id, index)
