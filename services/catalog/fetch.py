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


def is_public(address: IPAddress) -> bool:
    """Whether an address is on the public internet (not private, loopback,
    link-local, shared, reserved or multicast): the default policy."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_global and not address.is_multicast


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
        return client.build_request(
            "GET", pinned, headers={"host": host_header}, extensions=extensions
        )

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
                f"{host} resolves to {refused[0]}, which is not a public internet address",
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
