"""Reading a claim in tests: the product never reads a claim outside its Lua scripts."""

from __future__ import annotations

from payouts_core.store import claim_key
from payouts_core.text import as_str


def claim_of(store, client: str, external_id: str) -> dict[str, str]:
    """The claim hash of one client's external_id, as text ({} when never claimed)."""
    raw = store.client.hgetall(claim_key(client, external_id))
    return {as_str(k): as_str(v) for k, v in raw.items()}
