"""The fetcher's address policy: every IPv6 form of a non-public IPv4 address,
and deprecated or special IPv6 ranges, are refused."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.catalog.fetch import Fetcher, FetchError, FetchFailure, embedded_ipv4, is_public

# IPv4 ranges that are never the public internet, one address drawn from each.
NOT_PUBLIC_V4 = tuple(
    ipaddress.IPv4Network(n)
    for n in (
        "0.0.0.0/8",
        "10.0.0.0/8",
        "100.64.0.0/10",
        "127.0.0.0/8",
        "169.254.0.0/16",
        "172.16.0.0/12",
        "192.0.0.0/24",
        "192.0.2.0/24",
        "192.88.99.0/24",
        "192.168.0.0/16",
        "198.18.0.0/15",
        "198.51.100.0/24",
        "203.0.113.0/24",
        "224.0.0.0/4",
        "240.0.0.0/4",
    )
)
PUBLIC_V4 = ("8.8.8.8", "93.184.216.34", "1.1.1.1")
Embedding = Callable[[ipaddress.IPv4Address, int], ipaddress.IPv6Address]


def v6(value: int) -> ipaddress.IPv6Address:
    return ipaddress.IPv6Address(value)


def mapped(v4: ipaddress.IPv4Address, _: int) -> ipaddress.IPv6Address:
    return v6(0xFFFF << 32 | int(v4))


def compatible(v4: ipaddress.IPv4Address, _: int) -> ipaddress.IPv6Address:
    return v6(int(v4))


def translated(v4: ipaddress.IPv4Address, _: int) -> ipaddress.IPv6Address:
    return v6(0xFFFF << 48 | int(v4))


def nat64(v4: ipaddress.IPv4Address, _: int) -> ipaddress.IPv6Address:
    return v6(0x64FF9B << 96 | int(v4))


def nat64_local(v4: ipaddress.IPv4Address, noise: int) -> ipaddress.IPv6Address:
    # RFC 6052 with a /48 prefix: 16 bits of the IPv4 address, the u octet, 16 more.
    value = int(v4)
    return v6(0x64FF9B0001 << 80 | (value >> 16) << 64 | (value & 0xFFFF) << 40 | noise >> 88)


def sixtofour(v4: ipaddress.IPv4Address, noise: int) -> ipaddress.IPv6Address:
    return v6(0x2002 << 112 | int(v4) << 80 | noise >> 48)


def teredo_client(v4: ipaddress.IPv4Address, noise: int) -> ipaddress.IPv6Address:
    # Server 65.54.227.120 (public); the client's address is stored inverted.
    server = int(ipaddress.IPv4Address("65.54.227.120"))
    flags_port = noise & 0xFFFFFFFF
    return v6(0x20010000 << 96 | server << 64 | flags_port << 32 | (~int(v4) & 0xFFFFFFFF))


def teredo_server(v4: ipaddress.IPv4Address, noise: int) -> ipaddress.IPv6Address:
    client = ~int(ipaddress.IPv4Address("8.8.8.8")) & 0xFFFFFFFF
    return v6(0x20010000 << 96 | int(v4) << 64 | (noise & 0xFFFFFFFF) << 32 | client)


def isatap(v4: ipaddress.IPv4Address, noise: int) -> ipaddress.IPv6Address:
    # Under a global prefix (2620:0:1::/48), interface identifier 0200:5efe.
    return v6(0x262000000001 << 80 | (noise & 0xFFFF) << 64 | 0x02005EFE << 32 | int(v4))


EMBEDDINGS = (
    mapped,
    compatible,
    translated,
    nat64,
    nat64_local,
    sixtofour,
    teredo_client,
    teredo_server,
    isatap,
)


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("64:ff9b::a9fe:a9fe", False),  # NAT64 of 169.254.169.254, cloud metadata
        ("64:ff9b::7f00:1", False),
        ("64:ff9b::808:808", True),  # NAT64 of 8.8.8.8
        ("64:ff9b:1::1", False),  # local-use NAT64
        ("2002:7f00:1::1", False),  # 6to4 of 127.0.0.1
        ("2002:a9fe:a9fe::1", False),
        ("2002:808:808::1", True),  # 6to4 of 8.8.8.8
        ("::7f00:1", False),  # IPv4-compatible 127.0.0.1
        ("::808:808", False),  # IPv4-compatible is deprecated altogether
        ("::ffff:0:7f00:1", False),  # IPv4-translated
        ("::ffff:169.254.169.254", False),
        ("::ffff:8.8.8.8", True),
        ("2001:0:4136:e378:8000:63bf:80ff:fffe", False),  # Teredo, client 127.0.0.1
        ("2001:0:4136:e378:8000:63bf:3fff:fdd2", False),
        ("2620:0:1::200:5efe:7f00:1", False),  # ISATAP of 127.0.0.1
        ("2620:0:1::200:5efe:808:808", True),
        ("fec0::1", False),  # site-local
        ("3ffe::1", False),  # 6bone
        ("3fff::1", False),  # documentation
        ("2001:db8::1", False),
        ("100::1", False),  # discard-only
        ("5f00::1", False),  # SRv6
        ("ff02::1", False),
        ("::", False),
        ("192.88.99.1", False),  # 6to4 relay anycast
        ("192.0.0.9", False),
        ("2606:2800:220:1:248:1893:25c8:1946", True),
        ("8.8.8.8", True),
    ],
)
def test_special_and_embedded_addresses(address: str, public: bool) -> None:
    assert is_public(ipaddress.ip_address(address)) is public


@given(
    network=st.sampled_from(NOT_PUBLIC_V4),
    offset=st.integers(min_value=0, max_value=2**32 - 1),
    embed=st.sampled_from(EMBEDDINGS),
    noise=st.integers(min_value=0, max_value=2**128 - 1),
)
def test_a_non_public_ipv4_address_stays_refused_in_every_embedding(
    network: ipaddress.IPv4Network, offset: int, embed: Embedding, noise: int
) -> None:
    v4 = network[offset % network.num_addresses]
    assert not is_public(v4)
    address = embed(v4, noise)
    assert not is_public(address), f"{address} ({embed.__name__} of {v4})"


@pytest.mark.parametrize("v4", PUBLIC_V4)
@pytest.mark.parametrize("embed", [mapped, nat64, sixtofour, isatap, teredo_client])
def test_embeddings_find_the_ipv4_address(v4: str, embed: Embedding) -> None:
    address = embed(ipaddress.IPv4Address(v4), 0)
    assert ipaddress.IPv4Address(v4) in embedded_ipv4(address)


@pytest.mark.parametrize("v4", PUBLIC_V4)
@pytest.mark.parametrize("embed", [mapped, nat64, sixtofour, isatap])
def test_public_ipv4_addresses_stay_allowed_in_routable_embeddings(
    v4: str, embed: Embedding
) -> None:
    assert is_public(embed(ipaddress.IPv4Address(v4), 0))


@pytest.mark.parametrize(
    "url",
    [
        "http://[64:ff9b::a9fe:a9fe]/latest/meta-data/",
        "http://[2002:7f00:1::1]:8080/feed.xml",
        "http://[::7f00:1]/feed.xml",
        "http://[fec0::1]/feed.xml",
        "http://localhost/feed.xml",
    ],
)
async def test_refusals_never_say_what_the_host_resolves_to(url: str) -> None:
    fetcher = Fetcher(timeout_s=2, max_redirects=0)
    with pytest.raises(FetchError) as error:
        await fetcher.fetch(url, 1000)
    assert error.value.failure is FetchFailure.ADDRESS_NOT_ALLOWED
    for leaked in ("127.0.0.1", "::1", "169.254", "a9fe", "resolves"):
        assert leaked not in error.value.message


@pytest.mark.parametrize("character", ["\x00", "\x01", "\x7f"])
async def test_control_characters_in_a_url_fail_the_fetch(character: str) -> None:
    fetcher = Fetcher(timeout_s=2, max_redirects=0, address_allowed=lambda _: True)
    with pytest.raises(FetchError) as error:
        await fetcher.fetch(f"http://127.0.0.1:1/feed{character}.xml", 1000)
    assert (error.value.failure, error.value.cause) == (FetchFailure.UNREACHABLE, "url")
