"""Newest-first paging over a time-indexed sorted set (the history and the delivery log)."""

from __future__ import annotations

from payouts_core.store import decode_cursor, encode_cursor, newest_first


def test_members_of_one_millisecond_are_each_seen_once(redis_client, uid):
    key = f"test:history:{uid}"
    redis_client.zadd(key, {f"m{i:02d}": 1000 + i // 10 for i in range(35)})  # 10 per score

    pages, position = [], None
    while True:
        page, position = newest_first(redis_client, key, 4, position, lambda ms: ms)
        pages.append(page)
        if position is None:
            break

    seen = [m for page in pages for m in page]
    assert seen == sorted((f"m{i:02d}" for i in range(35)), key=lambda m: (int(m[1:]) // 10, m),
                          reverse=True)


def test_a_filter_that_matches_little_examines_a_bounded_number(redis_client, uid):
    key = f"test:history:{uid}"
    redis_client.zadd(key, {f"m{i}": i for i in range(500)})

    page, position = newest_first(redis_client, key, 10, None, lambda ms: [None] * len(ms),
                                  scan_max=100)

    assert page == [] and position == (400, "m400")  # a short page and where to go on


def test_cursors_round_trip_and_refuse_other_shapes():
    assert decode_cursor(encode_cursor(12, "a%3Ab"), int, str) == (12, "a%3Ab")
    for bad in ("", "!!", encode_cursor("12", "x"), encode_cursor(1), "e30"):
        try:
            decode_cursor(bad, int, str)
        except ValueError:
            continue
        raise AssertionError(bad)
