"""PIX keys (SPEC §7): detect, validate, normalise, mask. Unit tables and hypothesis properties.

The check-digit routines are the project's own; they are compared with an independent textbook
implementation here, on published numbers, and on every single-character change of generated keys.
"""

from __future__ import annotations

import json
import string
import uuid

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from payouts_core.pix_keys import (
    KEY_TYPES,
    InvalidPixKey,
    PixKey,
    cnpj_check_digits,
    cpf_check_digits,
    detect_pix_key_type,
    is_valid_cnpj,
    is_valid_cpf,
    mask_pix_key,
    parse_pix_key,
)

PROPERTY = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

CNPJ_CHARS = string.digits + string.ascii_uppercase


# -- an independent reference: the published algorithm, written out longhand ----------------------


def reference_remainder(chars: str, weights: list[int]) -> int:
    return sum((ord(c) - ord("0")) * w for c, w in zip(chars, weights, strict=True)) % 11


def reference_digit(remainder: int) -> str:
    return "0" if remainder in (0, 1) else str(11 - remainder)


def reference_cpf(base: str) -> str:
    d1 = reference_digit(reference_remainder(base, [10, 9, 8, 7, 6, 5, 4, 3, 2]))
    d2 = reference_digit(reference_remainder(base + d1, [11, 10, 9, 8, 7, 6, 5, 4, 3, 2]))
    return d1 + d2


def reference_cnpj(base: str) -> str:
    d1 = reference_digit(reference_remainder(base, [5, 4, 3, 2, 9, 8, 7, 6, 5, 4, 3, 2]))
    d2 = reference_digit(reference_remainder(base + d1, [6, 5, 4, 3, 2, 9, 8, 7, 6, 5, 4, 3, 2]))
    return d1 + d2


# -- strategies ------------------------------------------------------------------------------------

cpf_bases = st.text(string.digits, min_size=9, max_size=9)
cnpj_bases = st.text(CNPJ_CHARS, min_size=12, max_size=12)
numeric_cnpj_bases = st.text(string.digits, min_size=12, max_size=12)


@st.composite
def valid_cpfs(draw) -> str:
    base = draw(cpf_bases)
    value = base + reference_cpf(base)
    assume(len(set(value)) > 1)
    return value


@st.composite
def valid_cnpjs(draw, bases=cnpj_bases) -> str:
    base = draw(bases)
    value = base + reference_cnpj(base)
    assume(len(set(value)) > 1 and base != "0" * 12)
    return value


# ANATEL's assigned area codes (DDD), written out by first digit as its table lists them.
ASSIGNED_DDDS = {f"{region}{d}" for region, digits in [
    (1, "123456789"), (2, "12478"), (3, "1234578"), (4, "123456789"), (5, "1345"),
    (6, "123456789"), (7, "134579"), (8, "123456789"), (9, "123456789")] for d in digits}

br_phones = st.builds(lambda area, rest: f"+55{area}9{rest}",
                      st.sampled_from(sorted(ASSIGNED_DDDS)),
                      st.text(string.digits, min_size=8, max_size=8))
other_phones = st.builds(lambda first, rest: f"+{first}{rest}",  # E.164: 2 to 15 digits in all
                         st.sampled_from("12346789"),  # no +5x ambiguity with Brazil's +55
                         st.text(string.digits, min_size=1, max_size=14))
_atom = st.text(string.ascii_lowercase + string.digits + "_+-", min_size=1, max_size=12)
_label = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True)
emails = st.builds(lambda local, labels, tld: f"{'.'.join(local)}@{'.'.join(labels)}.{tld}",
                   st.lists(_atom, min_size=1, max_size=3), st.lists(_label, min_size=1, max_size=2),
                   st.from_regex(r"[a-z]{2,6}", fullmatch=True)).filter(lambda e: len(e) <= 77)
evps = st.uuids().map(str)

valid_keys = st.one_of(
    valid_cpfs().map(lambda v: PixKey("cpf", v)),
    valid_cnpjs().map(lambda v: PixKey("cnpj", v)),
    st.one_of(br_phones, other_phones).map(lambda v: PixKey("phone", v)),
    emails.map(lambda v: PixKey("email", v)),
    evps.map(lambda v: PixKey("evp", v)),
)


def formatted_variants(key: PixKey) -> list[str]:
    """Ways a client may write the same key."""
    v = key.value
    if key.type == "cpf":
        return [v, f"{v[:3]}.{v[3:6]}.{v[6:9]}-{v[9:]}", f" {v} "]
    if key.type == "cnpj":
        return [v, f"{v[:2]}.{v[2:5]}.{v[5:8]}/{v[8:12]}-{v[12:]}", v.lower()]
    if key.type == "phone" and v.startswith("+55"):
        return [v, f"+55 {v[3:5]} {v[5:10]}-{v[10:]}", f"+55 ({v[3:5]}) {v[5:10]} {v[10:]}"]
    if key.type == "phone":
        return [v, f"{v[:3]} {v[3:]}"]
    return [v, v.upper(), v.swapcase()]


# -- check digits ------------------------------------------------------------------------------------


@pytest.mark.parametrize("cpf", ["12345678909", "11144477735", "52998224725", "87316795107"])
def test_published_cpfs_are_valid(cpf):
    assert is_valid_cpf(cpf)
    assert cpf_check_digits(cpf[:9]) == cpf[9:]


@pytest.mark.parametrize("cnpj", ["11222333000181", "12345678000195", "00000000000191",
                                  "12ABC34501DE35"])  # the last one: Receita Federal's example
def test_published_cnpjs_are_valid(cnpj):
    assert is_valid_cnpj(cnpj)
    assert cnpj_check_digits(cnpj[:12]) == cnpj[12:]


@pytest.mark.parametrize("digit", string.digits)
def test_repeated_digit_numbers_are_refused_even_with_matching_check_digits(digit):
    assert not is_valid_cpf(digit * 11)
    assert not is_valid_cnpj(digit * 14)
    with pytest.raises(InvalidPixKey, match="repeated"):
        parse_pix_key(digit * 11)


def test_cnpj_with_a_zero_root_is_refused():
    base = "0" * 12
    assert not is_valid_cnpj(base + cnpj_check_digits(base))


@pytest.mark.parametrize("bad", ["12345678", "1234567890", "12345678a", "１２３４５６７８９", "",
                                 "ABCDEFGHI"])
def test_cpf_check_digits_refuse_bases_of_the_wrong_shape(bad):
    with pytest.raises(ValueError):
        cpf_check_digits(bad)


@pytest.mark.parametrize("bad", ["12345678901", "1234567890123", "12abc34501de",
                                 "１２３４５６７８９０１２", "", "12ABC34501D-"])
def test_cnpj_check_digits_refuse_bases_of_the_wrong_shape(bad):
    with pytest.raises(ValueError):
        cnpj_check_digits(bad)


@PROPERTY
@given(cpf_bases)
def test_cpf_check_digits_match_the_reference(base):
    assert cpf_check_digits(base) == reference_cpf(base)


@PROPERTY
@given(cnpj_bases)
@example("12ABC34501DE")
@example("ZZZZZZZZZZZZ")
def test_cnpj_check_digits_match_the_reference(base):
    assert cnpj_check_digits(base) == reference_cnpj(base)


def test_every_pair_of_positions_and_characters_matches_the_reference():
    """Exhaustive over two changed characters at a time, on a few seeds: every value of every
    position meets every value of every other position (12*11/2*36*36 CNPJs, 36*100 CPFs each)."""
    for seed in ("000000000000", "12ABC34501DE", "ZZZZZZZZZZZZ", "987654321098"):
        for i in range(12):
            for j in range(i + 1, 12):
                for a in CNPJ_CHARS:
                    for b in CNPJ_CHARS:
                        base = seed[:i] + a + seed[i + 1:j] + b + seed[j + 1:]
                        assert cnpj_check_digits(base) == reference_cnpj(base), base
    for seed in ("000000000", "123456789", "999999999", "529982247"):
        for i in range(9):
            for j in range(i + 1, 9):
                for a in string.digits:
                    for b in string.digits:
                        base = seed[:i] + a + seed[i + 1:j] + b + seed[j + 1:]
                        assert cpf_check_digits(base) == reference_cpf(base), base


@PROPERTY
@given(valid_cpfs())
def test_generated_cpfs_pass(cpf):
    assert is_valid_cpf(cpf)
    assert parse_pix_key(cpf) == PixKey("cpf", cpf)


@PROPERTY
@given(st.one_of(valid_cnpjs(), valid_cnpjs(numeric_cnpj_bases)))
def test_generated_cnpjs_pass_numeric_and_alphanumeric(cnpj):
    assert is_valid_cnpj(cnpj)
    assert parse_pix_key(cnpj) == PixKey("cnpj", cnpj)


def _mutations(value: str, position: int, alphabet: str) -> list[str]:
    return [value[:position] + c + value[position + 1:] for c in alphabet if c != value[position]]


@PROPERTY
@given(st.one_of(valid_cpfs(), valid_cnpjs()), st.data())
def test_any_change_to_a_check_digit_fails(value, data):
    position = data.draw(st.sampled_from([len(value) - 2, len(value) - 1]))
    for changed in _mutations(value, position, string.digits):
        with pytest.raises(InvalidPixKey):
            parse_pix_key(changed)


def test_mod_11_has_a_blind_spot_documented_here():
    """Remainders 0 and 1 both give the check digit 0, so a few single-digit changes go unseen:
    873.167.951-07 and 973.167.951-07 are both valid CPFs. The property below pins it down."""
    assert is_valid_cpf("87316795107") and is_valid_cpf("97316795107")


@PROPERTY
@given(st.one_of(valid_cpfs().map(lambda v: ("cpf", v)),
                 valid_cnpjs().map(lambda v: ("cnpj", v)),
                 valid_cnpjs(numeric_cnpj_bases).map(lambda v: ("cnpj", v))),
       st.data())
def test_any_single_character_change_fails_unless_mod_11_cannot_see_it(typed, data):
    """A changed character is refused, except exactly where mod 11 is blind by construction:
    the first remainder moves between 0 and 1 (both give check digit 0), or, for the
    alphanumeric CNPJ, the new character's value differs by a multiple of 11 (`7` and `B`)."""
    key_type, value = typed
    base_length = 9 if key_type == "cpf" else 12
    position = data.draw(st.integers(0, base_length - 1))
    alphabet = string.digits if key_type == "cpf" else CNPJ_CHARS
    first_weights = ([10, 9, 8, 7, 6, 5, 4, 3, 2] if key_type == "cpf"
                     else [5, 4, 3, 2, 9, 8, 7, 6, 5, 4, 3, 2])
    for changed in _mutations(value, position, alphabet):
        delta = ord(changed[position]) - ord(value[position])
        blind = delta % 11 == 0 or {reference_remainder(value[:base_length], first_weights),
                                    reference_remainder(changed[:base_length], first_weights)} == {0, 1}
        if blind:
            continue
        assert not (is_valid_cpf(changed) if key_type == "cpf" else is_valid_cnpj(changed)), changed
        with pytest.raises(InvalidPixKey):
            parse_pix_key(changed)


# -- parsing and normalising ------------------------------------------------------------------------


@pytest.mark.parametrize(("raw", "key_type", "value"), [
    ("12345678909", "cpf", "12345678909"),
    ("123.456.789-09", "cpf", "12345678909"),
    (" 123.456.789-09\t", "cpf", "12345678909"),
    ("12345678000195", "cnpj", "12345678000195"),
    ("12.345.678/0001-95", "cnpj", "12345678000195"),
    ("12.ABC.345/01DE-35", "cnpj", "12ABC34501DE35"),
    ("12.abc.345/01de-35", "cnpj", "12ABC34501DE35"),
    ("+5511912345678", "phone", "+5511912345678"),
    ("+55 11 91234-5678", "phone", "+5511912345678"),
    ("+55 (11) 91234-5678", "phone", "+5511912345678"),
    ("+14155550123", "phone", "+14155550123"),
    ("+44 20 7946 0958", "phone", "+442079460958"),
    ("U1@Email.com", "email", "u1@email.com"),
    ("fail.ac03@pix.test", "email", "fail.ac03@pix.test"),
    ("first.last+tag@sub.example.com.br", "email", "first.last+tag@sub.example.com.br"),
    ("550E8400-E29B-41D4-A716-446655440000", "evp", "550e8400-e29b-41d4-a716-446655440000"),
    ("123e4567-e89b-12d3-a456-426614174000", "evp", "123e4567-e89b-12d3-a456-426614174000"),
])
def test_accepted_keys_are_normalised(raw, key_type, value):
    assert parse_pix_key(raw) == PixKey(key_type, value)
    assert parse_pix_key(raw, expected_type=key_type) == PixKey(key_type, value)
    assert parse_pix_key(raw).value == value
    assert detect_pix_key_type(value) == key_type


@pytest.mark.parametrize(("raw", "reason"), [
    ("k", "expected a CPF, CNPJ"),
    ("12345678900", "check digits"),  # CPF with wrong check digits
    ("11111111111", "repeated"),
    ("12345678000100", "check digits"),
    ("12.ABC.345/01DE-3A", "expected a CPF, CNPJ"),  # check digits must be numeric
    ("1234567890", "expected a CPF, CNPJ"),  # 10 digits
    ("5511912345678", "expected a CPF, CNPJ"),  # a phone without +
    ("123.456.789.09", "expected a CPF, CNPJ"),
    ("+5511812345678", "9-digit mobile"),  # Brazilian landline
    ("+551191234567", "Brazilian"),  # one digit short
    ("+5501912345678", "Brazilian"),  # area code with a 0
    ("+5510912345678", "Brazilian"),
    ("+0123456789", "E.164"),
    ("+1", "E.164"),
    ("+1234567890123456789", "E.164"),
    ("+55 11 9a234-5678", "E.164"),
    ("a@b", "e-mail"),
    ("a@@b.com", "e-mail"),
    ("a..b@c.com", "e-mail"),
    (".a@c.com", "e-mail"),
    ("a b@c.com", "e-mail"),
    ("a@-b.com", "e-mail"),
    ("a@b.1com", "e-mail"),
    ("x" * 70 + "@ex.com.br", "at most 77"),
    ("550e8400e29b41d4a716446655440000", "expected a CPF, CNPJ"),  # no hyphens
    ("550e8400-e29b-41d4-a716-44665544000g", "expected a CPF, CNPJ"),
    ("", "empty"),
    ("   ", "empty"),
    ("1" * 101, "longer than 100"),
    ("１２３４５６７８９０９", "ASCII"),  # fullwidth digits
    ("123456789\u200b09", "ASCII"),  # zero-width space
    ("\u202e12345678909", "ASCII"),  # right-to-left override
    ("u1@emaıl.com", "ASCII"),  # dotless i
    ("\u212a@b.com", "ASCII"),  # Kelvin sign, lowercases to "k"
    ("123456789\n09", "ASCII"),
    ("12345678909\n", "ASCII"),
])
def test_refused_keys_say_why_without_repeating_the_key(raw, reason):
    with pytest.raises(InvalidPixKey) as refused:
        parse_pix_key(raw)
    assert reason in refused.value.message
    if len(raw.strip()) >= 4:
        assert raw.strip() not in refused.value.message


# -- the three rules differential testing found (issue 10, item 9) --------------------------------


@pytest.mark.parametrize(("raw", "accepted"), [
    ("+12", True),  # E.164's shortest: country code and one digit
    ("+123456789012345", True),  # 15 digits, the most E.164 allows
    ("+1 234 567-890 123 45", True),  # 15 digits, formatted
    ("+447911123456", True),
    ("+1234567890123456", False),  # 16 digits
    ("+1 234 567-890 123 456", False),  # 16 digits, formatted
    ("+4479111234567890", False),  # 16 digits
    ("+12345678901234567890", False),
    ("+1", False),
])
def test_phone_keys_have_at_most_15_digits(raw, accepted):
    if accepted:
        assert parse_pix_key(raw).type == "phone"
        return
    with pytest.raises(InvalidPixKey, match="E.164") as refused:
        parse_pix_key(raw)
    assert raw not in refused.value.message and raw.replace(" ", "") not in refused.value.message


@pytest.mark.parametrize(("raw", "accepted"), [
    ("a%b@example.com", False),
    ("%@example.com", False),
    ("user%example.org@relay.com", False),  # the old "percent hack" route
    ("first.last%tag@example.com.br", False),
    ("a!#$&'*+/=?^_`{|}~-z@example.com", True),  # every other character of the DICT class
    ("first.last+tag@example.com", True),
])
def test_email_keys_use_the_dict_character_class_without_percent(raw, accepted):
    if accepted:
        assert parse_pix_key(raw) == PixKey("email", raw)
        return
    with pytest.raises(InvalidPixKey, match="e-mail") as refused:
        parse_pix_key(raw)
    assert raw not in refused.value.message and "%" not in refused.value.message


@pytest.mark.parametrize("area", ["20", "23", "25", "26", "29", "30", "36", "39", "40", "50", "52",
                                  "56", "57", "58", "59", "60", "70", "72", "76", "78", "80", "90"])
def test_brazilian_phones_with_unassigned_area_codes_are_refused(area):
    for raw in (f"+55{area}912345678", f"+55 ({area}) 91234-5678"):
        with pytest.raises(InvalidPixKey, match="area code") as refused:
            parse_pix_key(raw)
        assert "912345678" not in refused.value.message and area not in refused.value.message


@pytest.mark.parametrize("area", [f"{n:02d}" for n in range(100)])
def test_brazilian_area_codes_are_exactly_anatels_assigned_list(area):
    raw = f"+55{area}912345678"
    if area in ASSIGNED_DDDS:
        assert parse_pix_key(raw) == PixKey("phone", raw)
    else:
        with pytest.raises(InvalidPixKey, match="Brazilian"):
            parse_pix_key(raw)


@pytest.mark.parametrize("raw", [None, 12345678909, 1.5, ["a@b.com"], {"k": "v"}, b"a@b.com"])
def test_non_strings_are_refused(raw):
    with pytest.raises(InvalidPixKey, match="string"):
        parse_pix_key(raw)


@pytest.mark.parametrize(("raw", "expected", "detected"), [
    ("11912345678", "phone", "cpf"),  # the ambiguity: 11 digits are a CPF, phones carry +
    ("12345678909", "cnpj", "cpf"),
    ("+5511912345678", "cpf", "phone"),
    ("u1@email.com", "evp", "email"),
    ("550e8400-e29b-41d4-a716-446655440000", "email", "evp"),
])
def test_expected_type_must_agree(raw, expected, detected):
    with pytest.raises(InvalidPixKey, match=f"pix_key_type '{expected}'.*type '{detected}'"):
        parse_pix_key(raw, expected_type=expected)


def test_unknown_expected_type_is_refused():
    with pytest.raises(InvalidPixKey, match="Unknown PIX key type"):
        parse_pix_key("u1@email.com", expected_type="iban")


def test_detect_by_shape_only():
    assert detect_pix_key_type("12345678900") == "cpf"  # wrong check digits, still CPF-shaped
    assert detect_pix_key_type("not a key") is None
    assert detect_pix_key_type(None) is None
    assert set(KEY_TYPES) == {"cpf", "cnpj", "phone", "email", "evp"}


@PROPERTY
@given(valid_keys, st.data())
def test_normalisation_is_idempotent_and_formatting_does_not_matter(key, data):
    raw = data.draw(st.sampled_from(formatted_variants(key)))
    parsed = parse_pix_key(raw)
    assert parsed == key
    assert parse_pix_key(parsed.value) == parsed
    assert parse_pix_key(parse_pix_key(raw).value).value == parse_pix_key(raw).value
    assert detect_pix_key_type(parsed.value) == parsed.type
    assert parse_pix_key(raw, expected_type=key.type) == key
    for other in set(KEY_TYPES) - {key.type}:
        with pytest.raises(InvalidPixKey):
            parse_pix_key(raw, expected_type=other)


@PROPERTY
@given(st.one_of(st.text(max_size=120), st.binary(max_size=40).map(lambda b: b.decode("latin-1"))))
def test_anything_else_is_either_a_key_or_an_invalid_pix_key(raw):
    try:
        key = parse_pix_key(raw)
    except InvalidPixKey as exc:
        assert exc.message
        stripped = raw.strip()
        if len(stripped) >= 8:
            assert stripped not in exc.message
    else:
        assert key.type in KEY_TYPES
        assert parse_pix_key(key.value) == key


# -- masking -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "masked"), [
    ("12345678909", "***456789**"),
    ("12ABC34501DE35", "**ABC345******"),
    ("+5511912345678", "+55*******5678"),
    ("u1@email.com", "u***@email.com"),
    ("a@b.com", "***@b.com"),
    ("550e8400-e29b-41d4-a716-446655440000", "550e****************************0000"),
    ("", ""),
    ("short", "*****"),
])
def test_masks(value, masked):
    assert mask_pix_key(value) == masked


@PROPERTY
@given(valid_keys)
def test_masking_never_reveals_the_full_key(key):
    masked = mask_pix_key(key.value)
    assert masked == mask_pix_key(key.value, key.type) == key.masked
    assert masked != key.value and key.value not in masked
    assert "*" in masked
    if key.type in ("cpf", "cnpj"):
        assert masked[-2:] == "**"  # check digits never shown
        assert sum(c != "*" for c in masked) <= 6
    if key.type == "email":
        local = key.value.partition("@")[0]
        assert masked.partition("@")[0] != local and local not in masked.partition("@")[0]


def test_uuid_module_agrees_with_evp_shape():
    for _ in range(50):
        value = str(uuid.uuid4())
        assert parse_pix_key(value.upper()) == PixKey("evp", value)


# -- through the API -------------------------------------------------------------------------------


def test_api_stores_normalised_keys_and_reports_type_and_mask(client, redis_client, uid):
    formatted = ["123.456.789-09", "12.abc.345/01de-35", "+55 (11) 91234-5678", "U1@Email.com",
                 "550E8400-E29B-41D4-A716-446655440000"]
    items = [{"external_id": f"pk-{uid}-{i}", "user_id": "u", "amount_cents": 100, "pix_key": key}
             for i, key in enumerate(formatted)]
    items[1]["pix_key_type"] = "cnpj"
    response = client.post("/api/payouts", json={"batch_id": f"pk-{uid}", "items": items})
    assert response.status_code == 202, response.get_data(as_text=True)

    details = response.get_json()["details"]
    assert [(d["pix_key_type"], d["pix_key"]) for d in details] == [
        ("cpf", "***456789**"), ("cnpj", "**ABC345******"), ("phone", "+55*******5678"),
        ("email", "u***@email.com"), ("evp", "550e****************************0000")]
    orders = redis_client.hgetall(f"payouts:batch:tests:pk-{uid}:orders")
    assert [json.loads(orders[str(i)])["pix_key"] for i in range(5)] == [
        "12345678909", "12ABC34501DE35", "+5511912345678", "u1@email.com",
        "550e8400-e29b-41d4-a716-446655440000"]

    # The same payload written another way (normalised keys, types spelled out) is a replay.
    same = [{**item, "pix_key": parse_pix_key(item["pix_key"]).value,
             "pix_key_type": detect_pix_key_type(item["pix_key"])} for item in items]
    assert client.post("/api/payouts", json={"batch_id": f"pk-{uid}", "items": same}).status_code == 200
    other = [{**items[0], "pix_key": "529.982.247-25"}, *items[1:]]
    assert client.post("/api/payouts", json={"batch_id": f"pk-{uid}", "items": other}).status_code == 409
