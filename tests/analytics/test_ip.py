"""IP normalisation, keyed hashing into listener and household ids, and exclusions."""

from __future__ import annotations

import hmac
import uuid
from ipaddress import IPv4Address, IPv6Address, ip_network

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from services.analytics.counting import (
    InvalidIpError,
    IpExclusions,
    IpHasher,
    ListenerRequest,
    normalise_ip,
    parse_ip,
)

from .support import APPLE_PODCASTS, HASHER, SECRET, SPOTIFY, TENANT


def test_ipv4_is_kept_whole() -> None:
    assert normalise_ip("203.0.113.7") == "203.0.113.7"
    assert normalise_ip(" 203.0.113.7\n") == "203.0.113.7"


def test_ipv6_is_truncated_to_its_first_64_bits() -> None:
    assert normalise_ip("2001:db8:1:2:aaaa:bbbb:cccc:dddd") == "2001:db8:1:2::/64"
    assert normalise_ip("2001:0DB8:0001:0002::1") == "2001:db8:1:2::/64"


def test_ipv6_hosts_of_one_64_share_ids_and_other_64s_do_not() -> None:
    same = HASHER.ids("2001:db8:1:2::1", APPLE_PODCASTS)
    assert HASHER.ids("2001:db8:1:2:ffff::9", APPLE_PODCASTS) == same
    assert HASHER.ids("2001:db8:1:3::1", APPLE_PODCASTS) != same


def test_ipv4_mapped_ipv6_is_the_ipv4_address() -> None:
    assert parse_ip("::ffff:192.0.2.1") == IPv4Address("192.0.2.1")
    assert HASHER.ids("::ffff:192.0.2.1", SPOTIFY) == HASHER.ids("192.0.2.1", SPOTIFY)


def test_ipv6_zone_id_is_dropped() -> None:
    assert normalise_ip("fe80::1%eth0") == "fe80:0:0:0::/64"


def test_ipv6_normal_form_never_compresses_the_prefix() -> None:
    assert normalise_ip("2001:db8::1") == "2001:db8:0:0::/64"
    assert normalise_ip("::1") == "0:0:0:0::/64"


@pytest.mark.parametrize(
    "garbage",
    [
        "",
        "   ",
        "example.com",
        "203.0.113.7:443",
        "[2001:db8::1]",
        "10.0.0.0/8",
        "1.2.3",
        "01.2.3.4",
        "::g",
        "1.2.3.4\0",
    ],
)
def test_garbage_is_rejected_with_a_clear_error(garbage: str) -> None:
    with pytest.raises(InvalidIpError, match="not an IP address"):
        HASHER.household_id(garbage)


def test_ids_are_hmac_sha256_of_the_normal_form_with_the_tenant_key() -> None:
    tenant_key = hmac.digest(SECRET, b"podmesh/ip-hash/v1\0" + TENANT.encode(), "sha256")
    household = hmac.digest(tenant_key, b"203.0.113.7", "sha256")[:16]
    listener_input = f"2001:db8:1:2::/64\0{APPLE_PODCASTS}".encode()
    listener = hmac.digest(tenant_key, listener_input, "sha256")[:16]
    assert HASHER.household_id("203.0.113.7") == household
    assert HASHER.listener_id("2001:db8:1:2::5", APPLE_PODCASTS) == listener


def test_ids_never_change() -> None:
    # Stored ids and sketches depend on these bytes: a change here is a migration.
    assert HASHER.household_id("203.0.113.7").hex() == "9d89603935a6041d03c2ac3949e91075"
    assert (
        HASHER.listener_id("2001:db8:1:2::5", APPLE_PODCASTS).hex()
        == "5273507f2b897a3bf5275d5abf8b681f"
    )


def test_ids_are_16_bytes_and_keyed_per_tenant() -> None:
    listener, household = HASHER.ids("203.0.113.7", APPLE_PODCASTS)
    assert len(listener) == len(household) == 16
    other_tenant = IpHasher(SECRET, uuid.uuid4())
    assert other_tenant.ids("203.0.113.7", APPLE_PODCASTS) != (listener, household)
    other_secret = IpHasher(b"another-platform-secret-abcdef", TENANT)
    assert other_secret.ids("203.0.113.7", APPLE_PODCASTS) != (listener, household)


def test_tenant_id_spelling_does_not_change_ids() -> None:
    upper = IpHasher(SECRET, TENANT.upper())
    parsed = IpHasher(SECRET, uuid.UUID(TENANT))
    assert upper.ids("203.0.113.7", SPOTIFY) == parsed.ids("203.0.113.7", SPOTIFY)


def test_listener_id_is_ip_plus_user_agent_and_household_is_ip_only() -> None:
    apple = HASHER.ids("203.0.113.7", APPLE_PODCASTS)
    spotify = HASHER.ids("203.0.113.7", SPOTIFY)
    assert apple[0] != spotify[0]
    assert apple[1] == spotify[1] == HASHER.household_id("203.0.113.7")
    assert apple[0] == HASHER.listener_id("203.0.113.7", APPLE_PODCASTS)


def test_short_platform_secret_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 16 bytes"):
        IpHasher(b"short", TENANT)


def test_raw_ip_is_not_kept_in_the_request_record() -> None:
    record = ListenerRequest.from_raw(
        request_id="a",
        time_us=0,
        episode_id="ep",
        client_ip="198.51.100.23",
        user_agent=SPOTIFY,
        hasher=HASHER,
    )
    assert "198.51.100.23" not in repr(record)
    assert record.listener_id == HASHER.listener_id("198.51.100.23", SPOTIFY)


def test_tenant_ip_exclusions_match_cidr_ranges() -> None:
    exclusions = IpExclusions(["203.0.113.0/24", "2001:db8::/32", "198.51.100.9/32"])
    assert exclusions.contains("203.0.113.200")
    assert not exclusions.contains("203.0.114.1")
    assert exclusions.contains("2001:db8:ffff::1")
    assert exclusions.contains("::ffff:203.0.113.5")
    assert exclusions.contains("198.51.100.9")
    assert not exclusions.contains("198.51.100.10")
    assert not IpExclusions().contains("203.0.113.1")


def test_tenant_ip_exclusions_can_name_a_single_ipv6_host() -> None:
    exclusions = IpExclusions(["2001:db8:1:2::5/128"])
    assert exclusions.contains("2001:db8:1:2::5")
    assert not exclusions.contains("2001:db8:1:2::6")


@pytest.mark.parametrize("bad", ["203.0.113.5/24", "nonsense", "10.0.0.0/33"])
def test_tenant_ip_exclusions_reject_bad_ranges(bad: str) -> None:
    with pytest.raises(ValueError, match="not a CIDR range"):
        IpExclusions([bad])


def test_excluded_ip_is_flagged_on_arrival() -> None:
    record = ListenerRequest.from_raw(
        request_id="a",
        time_us=0,
        episode_id="ep",
        client_ip="203.0.113.9",
        user_agent=SPOTIFY,
        hasher=HASHER,
        exclusions=IpExclusions(["203.0.113.0/24"]),
    )
    assert record.ip_excluded


@given(st.ip_addresses(), st.integers(0, 128), st.integers(0, 2**20))
def test_exclusion_agrees_with_the_standard_library(
    address: IPv4Address | IPv6Address, bits: int, distance: int
) -> None:
    network = ip_network((address, min(bits, address.max_prefixlen)), strict=False)
    probe = type(address)((int(address) + distance) % 2**address.max_prefixlen)
    # An IPv4-mapped address is its IPv4 address, which IPv6 ranges do not hold.
    assume(not isinstance(probe, IPv6Address) or probe.ipv4_mapped is None)
    assert IpExclusions([str(network)]).contains(str(probe)) is (probe in network)
