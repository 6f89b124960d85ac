"""Hand-written hostile bodies: each answers a 4xx problem+json and writes nothing (SPEC §3).

The table is raw bytes on purpose: duplicate keys, NaN and deep nesting cannot be written
with `json=`. Each row says which status it gets and, for 422, which field paths are named.
"""

from __future__ import annotations

import json

import pytest
from marshmallow.experimental.context import Context

from payouts_api.schemas import MAX_FIELD_ERRORS, MAX_OBJECT_KEYS, BatchRequestSchema
from payouts_core.pix_keys import MAX_RAW_LENGTH, InvalidPixKey, parse_pix_key
from payouts_core.settings import Settings
from tests.api.test_bad_input import assert_problem, field_paths, good_item, unchanged  # noqa: F401

CPF = "123.456.789-09"


def body(batch_id="b", items=None, **extra) -> bytes:
    payload = {"batch_id": batch_id, "items": [good_item()] if items is None else items, **extra}
    return json.dumps(payload).encode()


def item_with(**fields) -> dict:
    return {**good_item(), **fields}


def one_item(**fields) -> bytes:
    return body(items=[item_with(**fields)])


GOOD_ITEM_JSON = json.dumps(good_item())

# (id, raw body, expected status, field paths a 422 must name exactly)
HOSTILE = [
    # wrong types everywhere
    ("batch_id-list", body(batch_id=[]), 422, {"batch_id"}),
    ("batch_id-object", body(batch_id={"$gt": ""}), 422, {"batch_id"}),
    ("batch_id-int", body(batch_id=1), 422, {"batch_id"}),
    ("batch_id-bool", body(batch_id=True), 422, {"batch_id"}),
    ("items-int", body(items=1), 422, {"items"}),
    ("items-string", body(items="[]"), 422, {"items"}),
    ("items-of-null", body(items=[None]), 422, {"items.0"}),
    ("items-of-lists", body(items=[[], [GOOD_ITEM_JSON]]), 422, {"items.0", "items.1"}),
    ("items-of-strings", body(items=[GOOD_ITEM_JSON]), 422, {"items.0"}),
    ("item-all-wrong", body(items=[{"external_id": [], "user_id": {}, "amount_cents": "1",
                                    "pix_key": 12345678909}]), 422,
     {"items.0.external_id", "items.0.user_id", "items.0.amount_cents", "items.0.pix_key"}),
    ("pix_key-object", one_item(pix_key={"$ne": None}), 422, {"items.0.pix_key"}),
    ("pix_key-int-cpf", one_item(pix_key=12345678909), 422, {"items.0.pix_key"}),
    ("pix_key_type-unknown", one_item(pix_key_type="iban"), 422, {"items.0.pix_key_type"}),
    ("pix_key_type-uppercase", one_item(pix_key_type="EMAIL"), 422, {"items.0.pix_key_type"}),
    ("pix_key_type-list", one_item(pix_key_type=["email"]), 422, {"items.0.pix_key_type"}),
    ("pix_key_type-disagrees", one_item(pix_key=CPF, pix_key_type="phone"), 422, {"items.0.pix_key"}),
    # nulls
    ("all-null", b'{"batch_id":null,"items":null}', 422, {"batch_id", "items"}),
    ("item-fields-null", body(items=[{"external_id": None, "user_id": None, "amount_cents": None,
                                      "pix_key": None, "pix_key_type": None}]), 422,
     {"items.0.external_id", "items.0.user_id", "items.0.amount_cents", "items.0.pix_key",
      "items.0.pix_key_type"}),
    # booleans for ints, and other numbers that are not integer cents
    ("amount-true", one_item(amount_cents=True), 422, {"items.0.amount_cents"}),
    ("amount-false", one_item(amount_cents=False), 422, {"items.0.amount_cents"}),
    ("amount-float-integral", one_item(amount_cents=100.0), 422, {"items.0.amount_cents"}),
    ("amount-exponent", b'{"batch_id":"b","items":[{"external_id":"e","user_id":"u",'
                        b'"amount_cents":1e2,"pix_key":"a@b.com"}]}', 422, {"items.0.amount_cents"}),
    ("amount-overflow-float", b'{"batch_id":"b","items":[{"external_id":"e","user_id":"u",'
                              b'"amount_cents":1e400,"pix_key":"a@b.com"}]}', 422, {"items.0.amount_cents"}),
    ("amount-huge-int", one_item(amount_cents=10 ** 100), 422, {"items.0.amount_cents"}),
    ("amount-5000-digits", b'{"batch_id":"b","items":[{"amount_cents":' + b"9" * 5000 + b"}]}", 400, None),
    ("amount-negative-zero", b'{"batch_id":"b","items":[{"external_id":"e","user_id":"u",'
                             b'"amount_cents":-0,"pix_key":"a@b.com"}]}', 422, {"items.0.amount_cents"}),
    # NaN and Infinity are not JSON: refused while parsing, wherever they are
    ("amount-NaN", b'{"batch_id":"b","items":[{"external_id":"e","user_id":"u",'
                   b'"amount_cents":NaN,"pix_key":"a@b.com"}]}', 400, None),
    ("amount-Infinity", b'{"batch_id":"b","items":[{"external_id":"e","user_id":"u",'
                        b'"amount_cents":Infinity,"pix_key":"a@b.com"}]}', 400, None),
    ("amount-minus-Infinity", b'{"batch_id":"b","items":[{"external_id":"e","user_id":"u",'
                              b'"amount_cents":-Infinity,"pix_key":"a@b.com"}]}', 400, None),
    ("NaN-in-unknown-field", b'{"batch_id":"b","items":[],"x":NaN}', 400, None),
    # duplicate keys: which amount would we pay? refuse instead of guessing
    ("duplicate-amount", b'{"batch_id":"b","items":[{"external_id":"e","user_id":"u",'
                         b'"amount_cents":1,"amount_cents":100000,"pix_key":"a@b.com"}]}', 400, None),
    ("duplicate-batch_id", b'{"batch_id":"a","batch_id":"b","items":[' + GOOD_ITEM_JSON.encode() + b"]}",
     400, None),
    ("duplicate-items", b'{"batch_id":"b","items":[],"items":[' + GOOD_ITEM_JSON.encode() + b"]}", 400, None),
    ("duplicate-same-value", b'{"batch_id":"b","batch_id":"b","items":[' + GOOD_ITEM_JSON.encode() + b"]}",
     400, None),
    ("duplicate-in-unknown-object", b'{"batch_id":"b","items":[],"x":{"k":1,"k":2}}', 400, None),
    # deep nesting: malformed, never a RecursionError 500
    ("nested-100k-lists", b"[" * 100_000 + b"]" * 100_000, 400, None),
    ("nested-100k-objects", b'{"a":' * 100_000 + b"1" + b"}" * 100_000, 400, None),
    ("nested-100k-in-items", b'{"batch_id":"b","items":' + b"[" * 100_000 + b"]" * 100_000 + b"}", 400, None),
    ("nested-100k-unclosed", b"[" * 100_000, 400, None),
    ("nested-500-in-pix_key", one_item(pix_key=json.loads("[" * 500 + "]" * 500)), 422, {"items.0.pix_key"}),
    ("nested-500-in-items", body(items=json.loads("[" * 500 + "]" * 500)), 422, {"items.0"}),
    # huge strings (under the body cap)
    ("huge-batch_id", body(batch_id="a" * 1_000_000), 422, {"batch_id"}),
    ("huge-external_id", one_item(external_id="e" * 500_000), 422, {"items.0.external_id"}),
    ("huge-pix_key", one_item(pix_key="a" * 1_000_000 + "@b.com"), 422, {"items.0.pix_key"}),
    ("huge-pix_key-digits", one_item(pix_key="1" * 1_000_000), 422, {"items.0.pix_key"}),
    ("huge-email-backtracking", one_item(pix_key="a." * 40_000 + "@" + "b-" * 40_000), 422,
     {"items.0.pix_key"}),
    ("huge-unknown-key", body(**{"k" * 100_000: 1}), 422, None),
    ("many-unknown-fields", body(**{f"x{i}": i for i in range(20_000)}), 422, {"body"}),
    ("many-unknown-fields-in-an-item", body(items=[{f"x{i}": i for i in range(20_000)}]), 422,
     {"items.0"}),
    ("id-65-chars", body(batch_id="b" * 65), 422, {"batch_id"}),
    # unicode tricks in ids and keys
    ("fullwidth-batch_id", body(batch_id="ｂａｔｃｈ１"), 422, {"batch_id"}),
    ("zero-width-in-external_id", one_item(external_id="e\u200b1"), 422, {"items.0.external_id"}),
    ("bom-in-user_id", one_item(user_id="\ufeffu1"), 422, {"items.0.user_id"}),
    ("rtl-override-in-batch_id", body(batch_id="b\u202e1"), 422, {"batch_id"}),
    ("rtl-mark-in-user_id", one_item(user_id="u\u200f1"), 422, {"items.0.user_id"}),
    ("nul-in-batch_id", body(batch_id="b\x001"), 422, {"batch_id"}),
    ("newline-at-end-of-id", body(batch_id="b1\n"), 422, {"batch_id"}),
    ("lone-surrogate-in-id", b'{"batch_id":"b\\ud800","items":[' + GOOD_ITEM_JSON.encode() + b"]}",
     422, {"batch_id"}),
    ("emoji-in-external_id", one_item(external_id="e\U0001f4b8"), 422, {"items.0.external_id"}),
    ("combining-accent-in-id", one_item(user_id="jose\u0301"), 422, {"items.0.user_id"}),
    ("glob-in-batch_id", body(batch_id="batch:*"), 422, {"batch_id"}),
    ("path-in-batch_id", body(batch_id="../../etc/passwd"), 422, {"batch_id"}),
    ("space-in-batch_id", body(batch_id="b 1"), 422, {"batch_id"}),
    ("fullwidth-cpf", one_item(pix_key="１２３.４５６.７８９-０９"), 422, {"items.0.pix_key"}),
    ("arabic-indic-cpf", one_item(pix_key="١٢٣٤٥٦٧٨٩٠٩"), 422, {"items.0.pix_key"}),
    ("zero-width-in-cpf", one_item(pix_key="123.456.789\u200b-09"), 422, {"items.0.pix_key"}),
    ("zero-width-in-email", one_item(pix_key="a\u200b@b.com"), 422, {"items.0.pix_key"}),
    ("rtl-mark-in-phone", one_item(pix_key="\u200f+5511912345678"), 422, {"items.0.pix_key"}),
    ("cyrillic-a-in-email", one_item(pix_key="\u0430@b.com"), 422, {"items.0.pix_key"}),
    ("kelvin-sign-in-email", one_item(pix_key="\u212a@b.com"), 422, {"items.0.pix_key"}),
    ("nbsp-around-cpf", one_item(pix_key="\u00a012345678909\u00a0"), 422, {"items.0.pix_key"}),
    ("fullwidth-plus-phone", one_item(pix_key="\uff0b5511912345678"), 422, {"items.0.pix_key"}),
    # the body itself
    ("empty-body", b"", 400, None),
    ("whitespace-body", b"  \n ", 400, None),
    ("not-utf8", b'{"batch_id":"\xff\xfe"}', 400, None),
    ("trailing-garbage", body() + b"garbage", 400, None),
    ("two-documents", body() + body(), 400, None),
    ("single-quotes", b"{'batch_id': 'b'}", 400, None),
    ("trailing-comma", b'{"batch_id":"b",}', 400, None),
    ("comment", b'{"batch_id":"b" /* x */}', 400, None),
    ("top-level-list-of-batches", b"[" + body() + b"]", 400, None),
    ("top-level-true", b"true", 400, None),
]


@pytest.mark.usefixtures("unchanged")
@pytest.mark.parametrize(("raw", "status", "paths"), [pytest.param(*row[1:], id=row[0]) for row in HOSTILE])
def test_hostile_body_is_a_4xx_problem_and_writes_nothing(client, raw, status, paths):
    response = client.post("/api/payouts", data=raw, content_type="application/json")
    problem = assert_problem(response, status)
    if paths is not None:
        assert field_paths(problem) == paths
    assert len(response.get_data()) < 64_000  # never echoes a huge input back


@pytest.mark.usefixtures("unchanged")
@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded",
                                          "multipart/form-data; boundary=x", "application/xml"])
def test_a_body_that_is_not_json_is_415(client, content_type):
    response = client.post("/api/payouts", data=body(), content_type=content_type)
    assert_problem(response, 415)


@pytest.mark.usefixtures("unchanged")
def test_a_body_over_the_cap_is_413_before_it_is_parsed(app, client):
    app.config["MAX_CONTENT_LENGTH"] = 10_000
    raw = b"[" * 20_000 + b"]" * 20_000  # would be 400 if it were parsed
    assert_problem(client.post("/api/payouts", data=raw, content_type="application/json"), 413)


# -- bounded cost per request (issue 10, item 2): the caps decide the work, not the body --------------


def empty_items(count: int) -> bytes:
    return b'{"batch_id":"b","items":[' + b",".join([b"{}"] * count) + b"]}"


@pytest.mark.usefixtures("unchanged")
@pytest.mark.parametrize("extra", [1, 990_000])  # the second: the issue's 3 MB of `{}` (49 s before)
def test_more_items_than_the_cap_is_only_the_count_error(app, client, extra):
    """The count is checked before any item: one error, not 4 per item."""
    cap = app.config["SETTINGS"].max_items
    raw = empty_items(cap + extra)
    assert len(raw) < app.config["MAX_CONTENT_LENGTH"]
    problem = assert_problem(client.post("/api/payouts", data=raw, content_type="application/json"), 422)
    assert problem["errors"] == [{"field": "items",
                                  "message": f"At most {cap} items per batch; this one has {cap + extra}."}]


@pytest.mark.usefixtures("unchanged")
@pytest.mark.parametrize(("item", "per_item"), [
    ({}, 4),  # 4 required fields missing: stops after exactly 25 items
    ({"external_id": "", "amount_cents": True, "pix_key": "k"}, 4),
    ({"external_id": "e", "user_id": "u", "amount_cents": 0}, 2),
    ({"external_id": "e", "user_id": "u", "amount_cents": -1, "pix_key": "a@b.com", "x": 1}, 2),
    ({"user_id": "u", "amount_cents": 0, "pix_key": "k"}, 3),  # 34 items x 3 = 102 collected, 100 shown
])
def test_many_invalid_items_report_at_most_the_error_cap(app, client, item, per_item):
    items = [item] * app.config["SETTINGS"].max_items
    problem = assert_problem(client.post("/api/payouts", data=body(items=items),
                                         content_type="application/json"), 422)
    assert len(problem["errors"]) == MAX_FIELD_ERRORS
    checked = -(-MAX_FIELD_ERRORS // per_item)  # items validated before collection stopped
    assert {e["field"].split(".")[1] for e in problem["errors"]} <= {str(i) for i in range(checked)}
    assert problem["detail"].startswith("At least ")
    assert f"items {checked} to {len(items) - 1} of {len(items)} were not checked" in problem["detail"]


@pytest.mark.usefixtures("unchanged")
def test_few_invalid_items_are_all_reported_without_a_note(client):
    items = [{**item_with(external_id=f"e{i}"), "amount_cents": 0 if i % 2 else 1} for i in range(40)]
    problem = assert_problem(client.post("/api/payouts", data=body(items=items),
                                         content_type="application/json"), 422)
    assert field_paths(problem) == {f"items.{i}.amount_cents" for i in range(1, 40, 2)}
    assert problem["detail"] == "20 field(s) are invalid."


@pytest.mark.usefixtures("unchanged")
@pytest.mark.parametrize(("raw", "path"), [
    (body(**{f"x{i}": i for i in range(MAX_OBJECT_KEYS - 1)}), "body"),
    (body(items=[{**good_item(), **{f"x{i}": i for i in range(MAX_OBJECT_KEYS - 3)}}]), "items.0"),
])
def test_an_object_with_too_many_keys_is_one_error(client, raw, path):
    problem = assert_problem(client.post("/api/payouts", data=raw, content_type="application/json"), 422)
    assert problem["errors"] == [{"field": path, "message": f"At most {MAX_OBJECT_KEYS} fields in an "
                                                            f"object; this one has {MAX_OBJECT_KEYS + 1}."}]


def largest_valid_item() -> dict:
    """Every field at its longest: 64-char ids, a 10-digit amount (above the regulatory cap
    production allows; development and test allow more), a 100-character key (a phone's
    separators count), a type."""
    key = "+55 (11) 9" + " " * (MAX_RAW_LENGTH - 19) + "1234-5678"
    assert len(key) == MAX_RAW_LENGTH and parse_pix_key(key).value == "+5511912345678"
    return {"external_id": "e" * 64, "user_id": "u" * 64, "amount_cents": 1_499_999_000,
            "pix_key": key, "pix_key_type": "phone"}


def test_the_default_body_cap_fits_the_largest_valid_batch_and_little_more():
    """MAX_CONTENT_LENGTH is sized from the item cap: the largest valid batch, pretty-printed
    (json.dumps indent=2, 372 bytes an item), fits with headroom of at most a quarter."""
    defaults = Settings.from_env({})
    item = largest_valid_item()
    with Context({"max_items": defaults.max_items, "max_amount_cents": item["amount_cents"]}):
        BatchRequestSchema().load({"batch_id": "b" * 64, "items": [item]})  # it is valid
    one = len(json.dumps({"batch_id": "b" * 64, "items": [item]}, indent=2))
    two = len(json.dumps({"batch_id": "b" * 64, "items": [item, item]}, indent=2))
    largest_batch = one + (defaults.max_items - 1) * (two - one)
    assert largest_batch <= defaults.max_body_bytes <= 1.25 * largest_batch


@pytest.mark.usefixtures("unchanged")
def test_a_body_just_over_the_default_cap_is_413(app, client):
    cap = Settings.from_env({}).max_body_bytes
    assert app.config["MAX_CONTENT_LENGTH"] == cap
    head = empty_items((cap - 100) // 3)[:-2]

    def padded(size: int) -> bytes:  # valid JSON of exactly `size` bytes
        return head + b" " * (size - len(head) - 2) + b"]}"

    assert_problem(client.post("/api/payouts", data=padded(cap + 1), content_type="application/json"), 413)
    assert_problem(client.post("/api/payouts", data=padded(cap), content_type="application/json"), 422)


@pytest.mark.usefixtures("unchanged")
@pytest.mark.parametrize("pix_key", [
    "maria.silva.secret@example", "maria.silva@exam ple.com", "123.456.789-00", "98765432199",
    "+5511812345678", "12.345.678/0001-00", "550e8400-e29b-41d4-a716-44665544000z",
    "+55 11 91234-5678 ext 9"])
def test_a_refused_pix_key_is_never_echoed(client, pix_key):
    """PII: the 422 says why a key is refused without repeating it (nor its digits)."""
    with pytest.raises(InvalidPixKey):
        parse_pix_key(pix_key)
    response = client.post("/api/payouts", data=one_item(pix_key=pix_key), content_type="application/json")
    problem = assert_problem(response, 422)
    assert field_paths(problem) == {"items.0.pix_key"}
    text = response.get_data(as_text=True)
    digits = "".join(c for c in pix_key if c.isdigit())
    assert pix_key not in text and pix_key.lower() not in text
    assert len(digits) < 8 or digits not in text
    assert "maria" not in text


@pytest.mark.usefixtures("unchanged")
@pytest.mark.parametrize("path", ["/api/payouts/%00", "/api/payouts/" + "a" * 5000, "/api/payouts/*",
                                  "/api/payouts/%E2%80%AE", "/api/payouts/..%2F..%2Fetc"])
def test_hostile_batch_ids_in_the_url_are_refused_like_in_a_body(client, path):
    """GET validates the id as POST does (issue 10): 422 on `batch_id`, never a lookup."""
    response = client.get(path)
    if path.endswith(("%2Fetc", "*")) and response.status_code == 404:
        return  # the router already refused it: no batch route matched
    problem = assert_problem(response, 422)
    assert field_paths(problem) == {"batch_id"}
    assert "a" * 200 not in response.get_data(as_text=True)


def test_hostile_methods_and_routes_are_problems(client):
    assert_problem(client.put("/api/payouts", data=body(), content_type="application/json"), 405)
    assert_problem(client.patch("/api/payouts/b", data=body(), content_type="application/json"), 405)
    assert_problem(client.post("/api/payouts/b/../../x", data=body(), content_type="application/json"), 404)
