"""A double of Efí's Pix API (HTTPS with client certificates) for contract, pipeline and fault tests."""

from tests.psp_double.server import (
    CLIENT_ID,
    CLIENT_SECRET,
    PAYER_KEY,
    TEST_KEYS,
    Certs,
    PspDouble,
    efi_env,
    make_certs,
)

__all__ = ["CLIENT_ID", "CLIENT_SECRET", "PAYER_KEY", "TEST_KEYS", "Certs", "PspDouble", "efi_env",
           "make_certs"]
