"""The PIX provider boundary: what a settlement needs from a bank, and its error types.

`payouts_core.resources.get_provider()` picks the implementation (PAYOUTS_PROVIDER): the
simulator (`simulated.py`, the default) or Efí's Pix API (`efi.py`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import asdict, dataclass


def is_ispb(value: str) -> bool:
    """An ISPB: the 8 digits naming an SPI participant (the second part of every EndToEndId)."""
    return len(value) == 8 and value.isdigit()


class ProviderError(Exception):
    """A provider answer that is not a settled transfer. `code` follows the SPI catalogue."""

    def __init__(self, code: str, reason: str):
        super().__init__(f"{code}: {reason}")
        self.code = code
        self.reason = reason


class PermanentProviderError(ProviderError):
    """Rejected for good (no money moved): fail the item at once with this code."""


class TransientProviderError(ProviderError):
    """Outcome unknown or temporarily refused: retry with the same idempotency key."""


@dataclass(frozen=True)
class Transfer:
    """One provider-side transfer, recorded once per idempotency key."""

    idempotency_key: str
    external_id: str
    status: str  # "settled", "rejected", or "pending" (accepted, not yet final)
    amount_cents: int
    pix_key_masked: str
    created_at: str
    e2e_id: str | None = None
    failure_code: str | None = None
    failure_reason: str | None = None
    settles_at: str | None = None  # a pending transfer's expected settlement (simulator only)

    def as_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}


class PixProvider(ABC):
    """A PIX payment provider.

    `pay` is idempotent per key: a key it has seen returns the original transfer (or raises the
    original rejection) without moving money again.
    """

    @abstractmethod
    def pay(self, *, idempotency_key: str, external_id: str, amount_cents: int,
            pix_key: str) -> Transfer:
        """Settle a transfer; raise PermanentProviderError or TransientProviderError otherwise."""

    @property
    @abstractmethod
    def final_deadline_s(self) -> float:
        """Seconds after a call past which a key with no transfer will never have one.

        Until then, "no transfer" is an unknown outcome, not a failure (SPEC §5).
        """

    @abstractmethod
    def lookup(self, idempotency_key: str) -> Transfer | None:
        """The transfer recorded under this key, if any (used after an unknown outcome)."""

    @abstractmethod
    def transfers(self) -> Iterator[Transfer]:
        """Every transfer in the provider's ledger, oldest first (reconciliation)."""
