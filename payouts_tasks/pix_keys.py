"""PIX key handling that is safe to show: masking for logs, reports and the ledger.

A full pix_key is personal data; anything that leaves the settle path shows `mask_pix_key`.
"""

from __future__ import annotations


def mask_pix_key(key: str) -> str:
    """Keep just enough of a key to recognise it: `u***@email.com`, `+55*******5678`, `***456789**`."""
    if not key:
        return ""
    if "@" in key:
        local, _, domain = key.partition("@")
        return f"{local[:1]}***@{domain}"
    if key.startswith("+"):
        return key[:3] + "*" * max(len(key) - 7, 0) + key[-4:]
    if len(key) == 11 and key.isdigit():  # CPF: the Banco Central's own masking shows digits 4-9
        return "***" + key[3:9] + "**"
    if len(key) > 8:
        return key[:4] + "*" * (len(key) - 8) + key[-4:]
    return "*" * len(key)
