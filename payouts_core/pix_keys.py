"""PIX keys (DICT): detect the type, validate, normalise and mask (SPEC §7).

The API is small:

- `parse_pix_key(raw, expected_type=None) -> PixKey(type, value)` validates a key as a client
  sends it (formatted or not) and returns its type and its normalised value; it raises
  `InvalidPixKey(message)` otherwise. With `expected_type`, the key must be of that type.
- `detect_pix_key_type(key) -> str | None` tells a key's type from its shape alone, no checks.
- `mask_pix_key(key) -> str` is what logs, reports and the ledger show instead of a key.
- `cpf_check_digits(base9)` / `cnpj_check_digits(base12)` are the two mod-11 routines.

Accepted forms (input → normalised value):

| type  | input                                                   | value                   |
|-------|---------------------------------------------------------|-------------------------|
| cpf   | `12345678909`, `123.456.789-09`                         | `12345678909`           |
| cnpj  | `12.345.678/0001-95`, `12.abc.345/01de-35` (alphanumeric) | `12ABC34501DE35`      |
| phone | `+5511912345678`, `+55 (11) 91234-5678`, `+14155550123` | `+5511912345678`        |
| email | `U1@Email.com`                                          | `u1@email.com`          |
| evp   | a UUID, any version, any case                           | lowercase, 36 chars     |

Rules: only ASCII is accepted (fullwidth digits, zero-width or direction marks are refused, not
cleaned up); surrounding spaces are dropped. An 11-digit string is a CPF: a phone key always
starts with `+`. Messages never repeat the key (it is personal data).

A full pix_key is personal data; anything that leaves the settle path shows `mask_pix_key`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

KEY_TYPES = ("cpf", "cnpj", "phone", "email", "evp")
MAX_RAW_LENGTH = 100  # longest input considered at all (the longest key, an e-mail, is 77)
MAX_EMAIL_LENGTH = 77

_CPF_FORMATTED = re.compile(r"[0-9]{3}\.?[0-9]{3}\.?[0-9]{3}-?[0-9]{2}")
_CNPJ_FORMATTED = re.compile(r"[0-9A-Z]{2}\.?[0-9A-Z]{3}\.?[0-9A-Z]{3}/?[0-9A-Z]{4}-?[0-9]{2}")
_CNPJ = re.compile(r"[0-9A-Z]{12}[0-9]{2}")
_PHONE_SEPARATORS = re.compile(r"[ ().-]")
_PHONE = re.compile(r"\+[1-9][0-9]{1,14}")  # SPEC §7: E.164, at most 15 digits, ASCII only
_PHONE_BR = re.compile(r"\+55([0-9]{2})9[0-9]{8}")  # 2-digit area code, 9-digit mobile
# ANATEL's assigned area codes (DDD); the gaps (20, 23, 25, 26, 29, 30, 36, ...) reach no one.
BR_AREA_CODES = frozenset(
    str(n) for n in (*range(11, 20), 21, 22, 24, 27, 28, *range(31, 36), 37, 38, *range(41, 50), 51,
                     53, 54, 55, *range(61, 70), 71, 73, 74, 75, 77, 79, *range(81, 90), *range(91, 100)))
_EVP = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_EMAIL_ATOM = r"[a-z0-9!#$&'*+/=?^_`{|}~-]+"  # the DICT class (no %), dots between atoms only
_DNS_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_EMAIL = re.compile(rf"{_EMAIL_ATOM}(?:\.{_EMAIL_ATOM})*@{_DNS_LABEL}(?:\.{_DNS_LABEL})*\.[a-z]"
                    r"(?:[a-z0-9-]{0,61}[a-z0-9])?")

_CPF_WEIGHTS = tuple(range(10, 1, -1))  # first check digit; the second adds weight 11
_CNPJ_WEIGHTS = (6, 5, 4, 3, 2, 9, 8, 7, 6, 5, 4, 3, 2)  # the first digit uses the last 12


class InvalidPixKey(ValueError):
    """The key is not a valid PIX key; `message` says why without repeating the key."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class PixKey:
    """A validated key: `type` is one of KEY_TYPES, `value` the normalised key."""

    type: str
    value: str

    @property
    def masked(self) -> str:
        return mask_pix_key(self.value, self.type)


# -- check digits ------------------------------------------------------------------------------


def _mod11_digit(values: list[int], weights: tuple[int, ...]) -> int:
    """One mod-11 check digit: 11 - (sum of weighted values mod 11), 10 and 11 give 0."""
    remainder = sum(v * w for v, w in zip(values, weights[-len(values):], strict=True)) % 11
    return 0 if remainder < 2 else 11 - remainder


def cpf_check_digits(base: str) -> str:
    """The two check digits of a CPF from its first 9 digits (weights 10..2, then 11..2)."""
    if not re.fullmatch(r"[0-9]{9}", base):
        raise ValueError("a CPF base is 9 ASCII digits")
    values = [int(c) for c in base]
    first = _mod11_digit(values, (11, *_CPF_WEIGHTS))
    second = _mod11_digit([*values, first], (11, *_CPF_WEIGHTS))
    return f"{first}{second}"


def cnpj_check_digits(base: str) -> str:
    """The two check digits of a CNPJ from its first 12 characters ([0-9A-Z], value = ASCII - 48).

    Weights 5,4,3,2,9,8,7,6,5,4,3,2 then 6,5,4,...,2: the numeric CNPJ's, unchanged for the
    alphanumeric CNPJ in force from July 2026 (digits keep their values, `A` = 17 ... `Z` = 42).
    """
    if not re.fullmatch(r"[0-9A-Z]{12}", base):
        raise ValueError("a CNPJ base is 12 characters of [0-9A-Z]")
    values = [ord(c) - 48 for c in base]
    first = _mod11_digit(values, _CNPJ_WEIGHTS)
    second = _mod11_digit([*values, first], _CNPJ_WEIGHTS)
    return f"{first}{second}"


def is_valid_cpf(value: str) -> bool:
    """An unformatted CPF: 11 digits, not all the same, with matching check digits."""
    return (len(value) == 11 and value.isascii() and value.isdigit() and len(set(value)) > 1
            and cpf_check_digits(value[:9]) == value[9:])


def is_valid_cnpj(value: str) -> bool:
    """An unformatted CNPJ (numeric or alphanumeric, uppercase), not one repeated character."""
    return (_CNPJ.fullmatch(value) is not None and len(set(value)) > 1
            and value[:12] != "0" * 12 and cnpj_check_digits(value[:12]) == value[12:])


# -- detecting and parsing ---------------------------------------------------------------------


def _compact_document(key: str) -> str | None:
    """A CPF or CNPJ without its punctuation (uppercased), or None if it has neither shape."""
    upper = key.upper()
    if _CPF_FORMATTED.fullmatch(upper) or _CNPJ_FORMATTED.fullmatch(upper):
        return re.sub(r"[./-]", "", upper)
    return None


def detect_pix_key_type(key: str) -> str | None:
    """The type a key has by its shape (no check digits, no length rules), or None.

    `@` → email, leading `+` → phone, a UUID → evp, 11 digits (punctuated or not) → cpf,
    14 characters of the CNPJ shape → cnpj. The shapes do not overlap.
    """
    if not isinstance(key, str):
        return None
    key = key.strip(" \t")
    if "@" in key:
        return "email"
    if key.startswith("+"):
        return "phone"
    if _EVP.fullmatch(key.lower()):
        return "evp"
    compact = _compact_document(key)
    if compact is None:
        return None
    return "cpf" if len(compact) == 11 else "cnpj"


def _parse_cpf(key: str) -> str:
    compact = _compact_document(key)
    if compact is None or len(compact) != 11:
        raise InvalidPixKey("Not a valid CPF key: expected 11 digits, e.g. 123.456.789-09.")
    if len(set(compact)) == 1:
        raise InvalidPixKey("Not a valid CPF key: repeated-digit numbers are not CPFs.")
    if cpf_check_digits(compact[:9]) != compact[9:]:
        raise InvalidPixKey("Not a valid CPF key: the check digits do not match.")
    return compact


def _parse_cnpj(key: str) -> str:
    compact = _compact_document(key)
    if compact is None or len(compact) != 14:
        raise InvalidPixKey("Not a valid CNPJ key: expected 12 characters of [0-9A-Z] and 2 check "
                            "digits, e.g. 12.345.678/0001-95.")
    if len(set(compact)) == 1 or compact[:12] == "0" * 12:
        raise InvalidPixKey("Not a valid CNPJ key: repeated-character numbers are not CNPJs.")
    if cnpj_check_digits(compact[:12]) != compact[12:]:
        raise InvalidPixKey("Not a valid CNPJ key: the check digits do not match.")
    return compact


def _parse_phone(key: str) -> str:
    compact = _PHONE_SEPARATORS.sub("", key)
    if not _PHONE.fullmatch(compact):
        raise InvalidPixKey("Not a valid phone key: expected E.164, + and country code, "
                            "e.g. +5511912345678.")
    if compact.startswith("+55"):
        brazilian = _PHONE_BR.fullmatch(compact)
        if not brazilian:
            raise InvalidPixKey("Not a valid phone key: a Brazilian key is +55, a 2-digit area code "
                                "(11-99) and a 9-digit mobile number starting with 9.")
        if brazilian[1] not in BR_AREA_CODES:
            raise InvalidPixKey("Not a valid phone key: a Brazilian key needs an area code (DDD) "
                                "that ANATEL has assigned.")
    return compact


def _parse_email(key: str) -> str:
    value = key.lower()
    if len(value) > MAX_EMAIL_LENGTH:
        raise InvalidPixKey(f"Not a valid e-mail key: at most {MAX_EMAIL_LENGTH} characters.")
    local = value.partition("@")[0]
    if len(local) > 64 or not _EMAIL.fullmatch(value):
        raise InvalidPixKey("Not a valid e-mail key.")
    return value


def _parse_evp(key: str) -> str:
    value = key.lower()
    if not _EVP.fullmatch(value):
        raise InvalidPixKey("Not a valid EVP key: expected a 36-character UUID.")
    return value


_PARSERS = {"cpf": _parse_cpf, "cnpj": _parse_cnpj, "phone": _parse_phone,
            "email": _parse_email, "evp": _parse_evp}
_TYPE_HINTS = {"phone": " (a phone key starts with + and the country code)",
               "cpf": " (11 digits)", "cnpj": " (14 characters, the last 2 digits)",
               "email": " (it has an @)", "evp": " (a 36-character UUID)"}


def parse_pix_key(raw: str, expected_type: str | None = None) -> PixKey:
    """Validate and normalise a PIX key; raise InvalidPixKey with a reason that omits the key.

    `expected_type` (one of KEY_TYPES), when given, must be the key's type.
    """
    if expected_type is not None and expected_type not in KEY_TYPES:
        raise InvalidPixKey(f"Unknown PIX key type; expected one of {', '.join(KEY_TYPES)}.")
    if not isinstance(raw, str):
        raise InvalidPixKey("Not a valid PIX key: expected a string.")
    key = raw.strip(" \t")
    if not key:
        raise InvalidPixKey("Not a valid PIX key: it is empty.")
    if len(key) > MAX_RAW_LENGTH:
        raise InvalidPixKey(f"Not a valid PIX key: longer than {MAX_RAW_LENGTH} characters.")
    if not key.isascii() or not key.isprintable():
        raise InvalidPixKey("Not a valid PIX key: only printable ASCII characters are allowed "
                            "(no fullwidth digits, invisible or direction marks).")
    detected = detect_pix_key_type(key)
    if detected is None:
        raise InvalidPixKey("Not a valid PIX key: expected a CPF, CNPJ, phone (+55...), e-mail "
                            "or EVP (UUID) key.")
    if expected_type is not None and detected != expected_type:
        raise InvalidPixKey(f"Does not match pix_key_type {expected_type!r}{_TYPE_HINTS[expected_type]}: "
                            f"the key has the shape of type {detected!r}.")
    return PixKey(detected, _PARSERS[detected](key))


# -- masking -----------------------------------------------------------------------------------


def mask_pix_key(key: str, key_type: str | None = None) -> str:
    """Keep just enough of a key to recognise it; never the whole key.

    cpf `***456789**` (the Banco Central's own masking: digits 4-9), cnpj `**345678******`,
    phone `+55*******5678`, email `u***@email.com`, evp and anything else: first and last 4.
    """
    if not key:
        return ""
    key_type = key_type or detect_pix_key_type(key)
    if key_type == "email" or "@" in key:
        local, _, domain = key.partition("@")
        return f"{local[:1] if len(local) > 1 else ''}***@{domain}"
    if key_type == "phone" or key.startswith("+"):
        if len(key) >= 11:
            return key[:3] + "*" * (len(key) - 7) + key[-4:]
        return key[:1] + "*" * max(len(key) - 3, 1) + key[-2:] if len(key) > 3 else "*" * len(key)
    if key_type == "cpf" and len(key) == 11:
        return "***" + key[3:9] + "**"
    if key_type == "cnpj" and len(key) == 14:
        return "**" + key[2:8] + "******"
    if len(key) > 8:
        return key[:4] + "*" * (len(key) - 8) + key[-4:]
    return "*" * len(key)
