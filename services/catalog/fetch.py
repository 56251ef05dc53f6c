"""Fetching feeds and transcripts from the internet, and only from it.

Every hop (the URL and each redirect) is resolved here, its addresses checked,
and the connection made to the checked address, so DNS cannot answer one
address to the check and another to the connection. The body is read against
a size cap and the whole fetch against one deadline, which a server dripping
bytes cannot stretch.
"""

from __future__ import annotations

import asyncio
import enum
import ipaddress
import socket
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit, urlunsplit

import httpx

USER_AGENT = "PodmeshCatalog/1.0 (+https://podmesh.dev)"
_DEFAULT_PORTS = {"http": 80, "https": 443}
_REDIRECTS = frozenset({301, 302, 303, 307, 308})

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
AddressPolicy = Callable[[IPAddress], bool]


class FetchFailure(enum.Enum):
    UNREACHABLE = "unreachable"
    TOO_LARGE = "too_large"
    ADDRESS_NOT_ALLOWED = "address_not_allowed"


class FetchError(Exception):
    def __init__(self, failure: FetchFailure, message: str, cause: str = "") -> None:
        super().__init__(message)
        self.failure = failure
        self.message = message
        self.cause = cause or failure.value


@dataclass(frozen=True)
class Fetched:
    body: bytes
    content_type: str
    # After redirects.
    url: str


# Special-purpose ranges ipaddress still counts as global. 192.0.0.0/24 holds
# protocol anycasts; 192.88.99.0/24 was the deprecated 6to4 relay anycast.
_NOT_PUBLIC_V4 = tuple(ipaddress.ip_network(n) for n in ("192.0.0.0/24", "192.88.99.0/24"))
_NOT_PUBLIC_V6 = tuple(
    ipaddress.ip_network(n)
    for n in (
        # IPv4-compatible (deprecated, RFC 4291): ::a.b.c.d.
        "::/96",
        # IPv4-translated (SIIT, RFC 2765): ::ffff:0:a.b.c.d.
        "::ffff:0:0:0/96",
        # Local-use NAT64 (RFC 8215): translated by a NAT64 inside the network.
        "64:ff9b:1::/48",
        # Discard-only (RFC 6666).
        "100::/64",
        # Teredo: the server and client are IPv4 addresses, the client obfuscated.
        "2001::/32",
        # Documentation (RFC 3849, RFC 9637).
        "2001:db8::/32",
        "3fff::/20",
        # The 6bone test network, returned in 2006.
        "3ffe::/16",
        # Segment routing SIDs (RFC 9602).
        "5f00::/16",
        # Site-local (deprecated, RFC 3879).
        "fec0::/10",
    )
)
# Well-known NAT64 (RFC 6052): a NAT64 gateway connects to the embedded IPv4.
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
# ISATAP interface identifiers (RFC 5214): 0000:5efe or 0200:5efe, then the IPv4
# address, whatever the prefix; the u and g bits may be set.
_ISATAP_MASK = 0xFCFFFFFF
_ISATAP_ID = 0x00005EFE


def embedded_ipv4(address: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses an IPv6 address carries (IPv4-mapped, -compatible and
    -translated, NAT64, 6to4, Teredo server and client, ISATAP), which a
    translator, tunnel or dual-stack socket would connect to."""
    value = int(address)
    low = ipaddress.IPv4Address(value & 0xFFFFFFFF)
    found: list[ipaddress.IPv4Address] = []
    if address.ipv4_mapped is not None:
        found.append(address.ipv4_mapped)
    if value >> 32 == 0 or value >> 32 == 0xFFFF0000 or address in _NAT64:
        found.append(low)
    if address.sixtofour is not None:
        found.append(address.sixtofour)
    if address.teredo is not None:
        found.extend(address.teredo)
    if (value >> 32) & _ISATAP_MASK == _ISATAP_ID:
        found.append(low)
    return found


def _public_v4(address: ipaddress.IPv4Address) -> bool:
    return (
        address.is_global
        and not address.is_multicast
        and not any(address in net for net in _NOT_PUBLIC_V4)
    )


def is_public(address: IPAddress) -> bool:
    """Whether an address is on the public internet (not private, loopback,
    link-local, shared, reserved, deprecated, documentation or multicast, nor
    an IPv6 form of such an IPv4 address): the default policy."""
    if isinstance(address, ipaddress.IPv4Address):
        return _public_v4(address)
    embedded = embedded_ipv4(address)
    if not all(_public_v4(v4) for v4 in embedded):
        return False
    if address.ipv4_mapped is not None or address in _NAT64:
        # A socket or NAT64 gateway connects to the IPv4 address itself.
        return True
    return (
        address.is_global
        and not address.is_multicast
        and not address.is_reserved
        and not address.is_site_local
        and not any(address in net for net in _NOT_PUBLIC_V6)
    )


def any_address(address: IPAddress) -> bool:
    """For tests and development only: local feed servers are fetched too."""
    return True


class Fetcher:
    def __init__(
        self,
        *,
        timeout_s: float,
        max_redirects: int,
        address_allowed: AddressPolicy = is_public,
    ) -> None:
        self._timeout_s = timeout_s
        self._max_redirects = max_redirects
        self._address_allowed = address_allowed
        # Loading the CA bundle costs more than a small fetch: do it once.
        self._ssl = httpx.create_ssl_context()

    async def fetch(self, url: str, max_bytes: int, *, timeout_s: float | None = None) -> Fetched:
        """The document at `url` (an http(s) URL), or FetchError."""
        deadline = timeout_s or self._timeout_s
        try:
            async with asyncio.timeout(deadline):
                return await self._fetch(url, max_bytes)
        except TimeoutError:
            raise FetchError(
                FetchFailure.UNREACHABLE, f"no complete answer within {deadline:g}s", "timeout"
            ) from None

    async def _fetch(self, url: str, max_bytes: int) -> Fetched:
        async with httpx.AsyncClient(
            verify=self._ssl,
            # A proxy from the environment would connect on our behalf to
            # whatever it resolves: no address check would hold.
            trust_env=False,
            follow_redirects=False,
            timeout=self._timeout_s,
            headers={"user-agent": USER_AGENT},
        ) as client:
            current = url
            for _ in range(self._max_redirects + 1):
                request = await self._pinned_request(client, current)
                try:
                    response = await client.send(request, stream=True)
                except httpx.HTTPError as error:
                    raise FetchError(
                        FetchFailure.UNREACHABLE, f"{type(error).__name__}: {error}", "connect"
                    ) from None
                try:
                    location = response.headers.get("location")
                    if response.status_code in _REDIRECTS and location:
                        current = urljoin(current, location)
                        continue
                    if response.status_code != 200:
                        raise FetchError(
                            FetchFailure.UNREACHABLE,
                            f"answered HTTP {response.status_code}",
                            f"http_{response.status_code}",
                        )
                    body = await _read_capped(response, max_bytes)
                    return Fetched(body, response.headers.get("content-type", ""), current)
                finally:
                    await response.aclose()
        raise FetchError(
            FetchFailure.UNREACHABLE,
            f"more than {self._max_redirects} redirects",
            "too_many_redirects",
        )

    async def _pinned_request(self, client: httpx.AsyncClient, url: str) -> httpx.Request:
        """A request for `url` addressed to an address of its host that passed the check."""
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        try:
            port = parts.port or _DEFAULT_PORTS.get(scheme)
        except ValueError:
            port = None
        host = parts.hostname
        if scheme not in _DEFAULT_PORTS or not host or port is None:
            raise FetchError(FetchFailure.UNREACHABLE, f"{url[:200]!r} is not an http(s) URL")
        address = await self._checked_address(host, port)
        target = f"[{address}]" if address.version == 6 else str(address)
        pinned = urlunsplit((scheme, f"{target}:{port}", parts.path or "/", parts.query, ""))
        host_header = host if parts.port is None else f"{host}:{parts.port}"
        if ":" in host:
            host_header = f"[{host}]" if parts.port is None else f"[{host}]:{parts.port}"
        # TLS still names (and verifies) the host, not the address.
        extensions = {"sni_hostname": host} if scheme == "https" else {}
        try:
            return client.build_request(
                "GET", pinned, headers={"host": host_header}, extensions=extensions
            )
        except httpx.InvalidURL as error:
            # A redirect may name anything, control characters included.
            raise FetchError(FetchFailure.UNREACHABLE, f"{error}", "url") from None

    async def _checked_address(self, host: str, port: int) -> IPAddress:
        try:
            addresses = [ipaddress.ip_address(host)]
        except ValueError:
            addresses = await _resolve(host, port)
        # All or nothing: a host that also resolves to a refused address could
        # be steered to it by the next lookup.
        refused = [a for a in addresses if not self._address_allowed(a)]
        if refused:
            raise FetchError(
                FetchFailure.ADDRESS_NOT_ALLOWED,
                # Never which address: that would tell a caller what an internal
                # name resolves to.
                "the host is not a public internet address",
            )
        return addresses[0]


async def _resolve(host: str, port: int) -> list[IPAddress]:
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as error:
        raise FetchError(
            FetchFailure.UNREACHABLE, f"cannot resolve {host}: {error}", "dns"
        ) from None
    found: dict[IPAddress, None] = {}
    for _family, _type, _proto, _name, sockaddr in infos:
        found[ipaddress.ip_address(sockaddr[0])] = None
    if not found:
        raise FetchError(FetchFailure.UNREACHABLE, f"cannot resolve {host}", "dns")
    return list(found)


async def _read_capped(response: httpx.Response, max_bytes: int) -> bytes:
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise FetchError(
            FetchFailure.TOO_LARGE,
            f"declares {int(declared)} bytes, over the {max_bytes} byte limit",
        )
    chunks: list[bytes] = []
    total = 0
    try:
        # Decoded bytes: the cap also stops a small compressed bomb.
        async for chunk in response.aiter_bytes():
            total += len(chunk)
            if total > max_bytes:
                raise FetchError(FetchFailure.TOO_LARGE, f"is over the {max_bytes} byte limit")
            chunks.append(chunk)
    except httpx.HTTPError as error:
        raise FetchError(
            FetchFailure.UNREACHABLE, f"{type(error).__name__}: {error}", "read"
        ) from None
    return b"".join(chunks)
