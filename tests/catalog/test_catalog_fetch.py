"""The fetcher: public addresses only, a size cap, one deadline, checked redirects."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator

import pytest

from services.catalog.fetch import (
    Fetcher,
    FetchError,
    FetchFailure,
    IPAddress,
    any_address,
    is_public,
)
from tests.catalog.support import FeedServer, SilentServer


@pytest.fixture(scope="module")
def server() -> Iterator[FeedServer]:
    with FeedServer() as running:
        yield running


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("93.184.216.34", True),
        ("2606:2800:220:1:248:1893:25c8:1946", True),
        ("127.0.0.1", False),
        ("10.1.2.3", False),
        ("172.16.0.1", False),
        ("192.168.1.1", False),
        ("169.254.169.254", False),  # cloud metadata
        ("100.64.0.1", False),  # carrier-grade NAT
        ("0.0.0.0", False),
        ("224.0.0.1", False),
        ("::1", False),
        ("fe80::1", False),
        ("fd00::1", False),
        ("::ffff:127.0.0.1", False),
        ("::ffff:10.0.0.1", False),
    ],
)
def test_is_public(address: str, public: bool) -> None:
    assert is_public(ipaddress.ip_address(address)) is public


async def fail(fetcher: Fetcher, url: str, max_bytes: int = 1_000_000) -> FetchError:
    with pytest.raises(FetchError) as error:
        await fetcher.fetch(url, max_bytes)
    return error.value


async def test_private_addresses_are_refused_by_default(server: FeedServer) -> None:
    server.serve("/feed.xml", b"<rss/>")
    fetcher = Fetcher(timeout_s=2, max_redirects=3)
    for url in (server.url("/feed.xml"), server.url("/feed.xml").replace("127.0.0.1", "localhost")):
        error = await fail(fetcher, url)
        assert error.failure is FetchFailure.ADDRESS_NOT_ALLOWED
    assert server.hits["/feed.xml"] == 0


async def test_redirects_are_followed_and_checked_again(server: FeedServer) -> None:
    server.serve("/target.xml", b"<rss>ok</rss>")
    server.redirect("/hop.xml", "/target.xml", status=308)
    # Only 127.0.0.1 is allowed here, so a redirect elsewhere on loopback is not.
    only_this: set[IPAddress] = {ipaddress.ip_address("127.0.0.1")}
    fetcher = Fetcher(timeout_s=2, max_redirects=3, address_allowed=only_this.__contains__)
    fetched = await fetcher.fetch(server.url("/hop.xml"), 1000)
    assert (fetched.body, fetched.url) == (b"<rss>ok</rss>", server.url("/target.xml"))
    port = server.base_url.rsplit(":", 1)[1]
    server.redirect("/away.xml", f"http://127.0.0.2:{port}/target.xml")
    error = await fail(fetcher, server.url("/away.xml"))
    assert error.failure is FetchFailure.ADDRESS_NOT_ALLOWED
    server.redirect("/ftp.xml", "ftp://example.com/feed.xml")
    assert (await fail(fetcher, server.url("/ftp.xml"))).failure is FetchFailure.UNREACHABLE


async def test_size_cap_with_and_without_content_length(server: FeedServer) -> None:
    fetcher = Fetcher(timeout_s=2, max_redirects=0, address_allowed=any_address)
    body = b"x" * 10_000
    for path, declared in (("/declared", True), ("/streamed", False)):
        server.serve(path, body, declare_length=declared)
        error = await fail(fetcher, server.url(path), max_bytes=9_999)
        assert error.failure is FetchFailure.TOO_LARGE
        assert (await fetcher.fetch(server.url(path), 10_000)).body == body


async def test_one_deadline_for_the_whole_fetch() -> None:
    fetcher = Fetcher(timeout_s=0.5, max_redirects=0, address_allowed=any_address)
    with SilentServer() as silent:
        error = await fail(fetcher, silent.url)
    assert (error.failure, error.cause) == (FetchFailure.UNREACHABLE, "timeout")


async def test_unreachable_hosts(server: FeedServer) -> None:
    fetcher = Fetcher(timeout_s=2, max_redirects=0, address_allowed=any_address)
    assert (await fail(fetcher, server.url("/missing"))).cause == "http_404"
    assert (await fail(fetcher, "http://no-such-host.invalid/feed")).cause == "dns"
    assert (await fail(fetcher, "http://127.0.0.1:1/feed")).cause == "connect"
