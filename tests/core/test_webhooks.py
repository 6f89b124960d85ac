"""The SSRF guard and the URL rules, decided before any connection (no traffic leaves here:
the resolver is replaced by a table, as the guard takes it as a parameter)."""

from __future__ import annotations

import socket

import pytest

from payouts_core.webhooks import (
    DestinationRefused,
    allowed_ports,
    check_literal_host,
    parse_url,
    resolve,
)


def resolver(*addresses: str):
    def lookup(host, port, type=0):  # noqa: A002 - getaddrinfo's name
        family = socket.AF_INET6 if ":" in addresses[0] else socket.AF_INET
        return [(family, socket.SOCK_STREAM, 6, "", (a, port)) for a in addresses]
    return lookup


@pytest.mark.parametrize("address", ["127.0.0.1", "10.0.0.1", "10.255.3.4", "172.16.0.9", "192.168.1.1",
                                     "169.254.169.254", "100.64.0.1", "0.0.0.0", "224.0.0.1",
                                     "240.0.0.1", "::1", "fe80::1", "fc00::1", "::ffff:127.0.0.1",
                                     "::ffff:10.0.0.1"])
def test_internal_addresses_are_refused_unless_allowed(address):
    destination = parse_url("https://hooks.platform.example/x", allow_http=False)

    with pytest.raises(DestinationRefused):
        resolve(destination, allow_private=False, resolver=resolver(address))
    assert resolve(destination, allow_private=True, resolver=resolver(address)) == [address]


def test_one_internal_answer_refuses_the_host():
    destination = parse_url("https://mixed.example/", allow_http=False)

    with pytest.raises(DestinationRefused):
        resolve(destination, allow_private=False, resolver=resolver("93.184.216.34", "10.0.0.7"))


def test_public_addresses_pass():
    destination = parse_url("https://hooks.platform.example:8443/in?x=1", allow_http=False)

    assert resolve(destination, False, resolver("93.184.216.34")) == ["93.184.216.34"]
    assert (destination.port, destination.target, destination.host_header) == \
        (8443, "/in?x=1", "hooks.platform.example:8443")


@pytest.mark.parametrize("url", ["http://hooks.example/", "ftp://hooks.example/", "https://", "hooks.example",
                                 "https://user:pw@hooks.example/", "https://hooks.example/#x",
                                 "https://hooks.example:99999/", "https://hooks .example/",
                                 "https://" + "a" * 2100 + ".example/"])
def test_urls_refused_at_registration(url):
    with pytest.raises(DestinationRefused):
        parse_url(url, allow_http=False)


@pytest.mark.parametrize("url", ["https://127.0.0.1/", "https://[::1]/", "https://10.1.2.3/",
                                 "https://169.254.169.254/latest/meta-data", "https://localhost:8000/",
                                 "https://api.localhost/"])
def test_literal_internal_hosts_refused_at_registration_without_dns(url):
    with pytest.raises(DestinationRefused):
        check_literal_host(parse_url(url, allow_http=False), allow_private=False)
    check_literal_host(parse_url(url, allow_http=False), allow_private=True)


def test_http_only_when_allowed():
    assert parse_url("http://127.0.0.1:9/h", allow_http=True).port == 9


# --- issue 20: tunnelled IPv6 and ports -------------------------------------------------------

@pytest.mark.parametrize("address", [
    "2002:a9fe:a9fe::",             # 6to4 carrying 169.254.169.254 (Python calls it global)
    "2002:5db8:d822::1",            # 6to4 carrying a public address: still a relay, refused
    "2001:0:4136:e378:8000:63bf:3fff:fdd2",  # Teredo
    "64:ff9b::a9fe:a9fe",           # NAT64 well-known prefix carrying 169.254.169.254
])
def test_tunnelled_ipv6_is_refused(address):
    destination = parse_url("https://hooks.platform.example/x", allow_http=False)

    with pytest.raises(DestinationRefused, match="tunnelled"):
        resolve(destination, allow_private=False, resolver=resolver(address))
    with pytest.raises(DestinationRefused):
        check_literal_host(parse_url(f"https://[{address}]/", allow_http=False), allow_private=False)


def test_a_native_public_ipv6_address_passes():
    destination = parse_url("https://hooks.platform.example/x", allow_http=False)
    assert resolve(destination, False, resolver("2606:2800:220:1::1")) == ["2606:2800:220:1::1"]


def test_ports_default_to_443_and_80_with_plain_http():
    https_only, with_http = allowed_ports((), False), allowed_ports((), True)

    assert https_only == {443} and with_http == {443, 80}
    assert parse_url("https://hooks.example/", False, https_only).port == 443
    assert parse_url("https://hooks.example:443/", False, https_only).port == 443
    for url in ("https://hooks.example:8443/", "https://hooks.example:22/", "https://hooks.example:80/"):
        with pytest.raises(DestinationRefused, match="port 443"):
            parse_url(url, False, https_only)
    assert parse_url("http://hooks.example/", True, with_http).port == 80
    with pytest.raises(DestinationRefused, match="port"):
        parse_url("http://hooks.example:6379/", True, with_http)


def test_configured_ports_replace_the_defaults_and_star_allows_any():
    assert parse_url("https://hooks.example:8443/", False, allowed_ports((8443,), False)).port == 8443
    with pytest.raises(DestinationRefused):
        parse_url("https://hooks.example/", False, allowed_ports((8443,), False))
    assert allowed_ports(None, False) is None
    assert parse_url("https://hooks.example:25/", False, allowed_ports(None, False)).port == 25
