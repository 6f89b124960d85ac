"""A batch_id names one payload forever: any change of any item field is another payload.

The fingerprint is taken of the payload as the request schema loads it, so a field the schema
dropped or normalised away would make two different payloads look alike (409 never raised).
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from marshmallow.experimental.context import Context

from payouts_api.schemas import BatchRequestSchema
from payouts_core.store import fingerprint

IDS = st.text("abcXYZ019._:-", min_size=1, max_size=12)
# Each kind of key once: an e-mail, a CPF, a phone, an EVP (valid values, distinct normalised).
KEYS = st.sampled_from(["ana@example.com", "bia@example.com", "52998224725", "+5511912345678",
                        "123e4567-e89b-12d3-a456-426614174000"])
FIELDS = {"external_id": IDS, "user_id": IDS, "amount_cents": st.integers(1, 1_499_999),
          "pix_key": KEYS}
ITEM = st.fixed_dictionaries(FIELDS)


def load(payload: dict) -> dict:
    with Context({"max_items": 100, "max_amount_cents": 1_499_999}):
        return BatchRequestSchema().load(payload)


@given(batch_id=IDS, items=st.lists(ITEM, min_size=1, max_size=5), data=st.data())
def test_any_change_of_any_item_field_changes_the_fingerprint(batch_id, items, data):
    index = data.draw(st.integers(0, len(items) - 1))
    name = data.draw(st.sampled_from(sorted(FIELDS)))
    new_value = data.draw(FIELDS[name].filter(lambda v: v != items[index][name]))
    changed = [dict(item) for item in items]
    changed[index][name] = new_value

    assert fingerprint(load({"batch_id": batch_id, "items": changed})) != fingerprint(
        load({"batch_id": batch_id, "items": items}))


@given(batch_id=IDS, items=st.lists(ITEM, min_size=1, max_size=5))
def test_the_same_payload_has_the_same_fingerprint(batch_id, items):
    reordered = [dict(reversed(list(item.items()))) for item in items]
    assert fingerprint(load({"batch_id": batch_id, "items": reordered})) == fingerprint(
        load({"batch_id": batch_id, "items": items}))
