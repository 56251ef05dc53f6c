"""Client IPs, shared by every service that sees them: normalisation, keyed hashing
into listener and household ids (analytics and attribution must agree on them), exclusions.

Raw IPs are never kept: ingestion turns the client IP into ids on arrival and
stores only those. For the same reason nothing here caches by IP, so no raw
address lingers in process memory either.

Normalisation (:func:`normalise_ip`): an IPv4 address is kept whole; an IPv6
address is truncated to its first 64 bits (one /64 is one subscriber line, and
its low bits rotate with privacy extensions); an IPv4-mapped IPv6 address
(``::ffff:192.0.2.1``) is its IPv4 address; a zone id (``%eth0``) is dropped.
The normal form is text, fixed here once and for all because every id
derives from it: dotted decimal for IPv4 (``"192.0.2.1"``), and for IPv6 the
four leading groups in lower-case hex without leading zeros, then ``::/64``
(``"2001:db8:0:2::/64"``; no zero compression, so no library's formatting
choices can ever change an id).

Hashing (:class:`IpHasher`): per tenant key = HMAC-SHA256(platform secret,
``"podmesh/ip-hash/v1\\0" + tenant uuid`` in canonical lower-case form), so
ids of one tenant say nothing about another's. Then, truncated to 16 bytes:

- household id = HMAC-SHA256(tenant key, normalised IP)
- listener id  = HMAC-SHA256(tenant key, normalised IP + ``"\\0"`` + User-Agent)

The normal form never contains ``"\\0"``, so the two inputs cannot collide.

Exclusions (:class:`IpExclusions`) match the full address before truncation,
so a tenant can exclude a single IPv6 host; since raw IPs are not kept, the
match is made on arrival and stored with the request.
"""

from __future__ import annotations

import hashlib
import hmac
import socket
import struct
import uuid
from collections.abc import Iterable
from ipaddress import IPv4Address, IPv6Address, ip_address, ip_network

ID_BYTES = 16
_KEY_CONTEXT = b"podmesh/ip-hash/v1\0"
_MAPPED_PREFIX = b"\0" * 10 + b"\xff\xff"
_MIN_SECRET_BYTES = 16
_SHA256_BLOCK = 64
_FOUR_GROUPS = struct.Struct("!4H")

IpAddress = IPv4Address | IPv6Address


class InvalidIpError(ValueError):
    """The text is not an IPv4 or IPv6 address."""


def _packed(text: str) -> bytes:
    """4 bytes for IPv4 (IPv4-mapped IPv6 included), 16 for IPv6."""
    candidate = text.strip()
    try:
        if ":" in candidate:
            packed = socket.inet_pton(socket.AF_INET6, candidate.partition("%")[0])
            return packed[12:] if packed[:12] == _MAPPED_PREFIX else packed
        return socket.inet_pton(socket.AF_INET, candidate)
    except (OSError, ValueError):
        raise InvalidIpError(f"not an IP address: {text[:64]!r}") from None


def parse_ip(text: str) -> IpAddress:
    """The address in ``text``, IPv4-mapped IPv6 unwrapped and zone id dropped.

    Surrounding whitespace is ignored; anything else that is not an address
    (ports, brackets, CIDR suffixes, host names, leading zeros) raises
    :class:`InvalidIpError`.
    """
    return ip_address(_packed(text))


def normalise_ip(text: str) -> str:
    """The normal form hashed for ids: the IPv4 address, or the IPv6 /64 network."""
    candidate = text.strip()
    if ":" not in candidate:
        try:
            socket.inet_pton(socket.AF_INET, candidate)
        except (OSError, ValueError):
            raise InvalidIpError(f"not an IP address: {text[:64]!r}") from None
        # inet_pton takes only four decimal parts of 0 to 255 without leading zeros,
        # which is the normal form already.
        return candidate
    packed = _packed(candidate)
    if len(packed) == 4:
        return f"{packed[0]}.{packed[1]}.{packed[2]}.{packed[3]}"
    a, b, c, d = _FOUR_GROUPS.unpack_from(packed)
    return f"{a:x}:{b:x}:{c:x}:{d:x}::/64"


class IpHasher:
    """Turns a client IP (and User-Agent) into one tenant's household and listener ids.

    HMAC-SHA256 computed from precomputed inner and outer hash states (the
    standard construction, RFC 2104), which halves the cost per id.
    """

    __slots__ = ("_inner", "_outer")

    def __init__(self, platform_secret: bytes, tenant_id: uuid.UUID | str) -> None:
        if len(platform_secret) < _MIN_SECRET_BYTES:
            raise ValueError(f"the IP hash secret needs at least {_MIN_SECRET_BYTES} bytes")
        tenant = str(uuid.UUID(str(tenant_id))).encode()
        key = hmac.digest(platform_secret, _KEY_CONTEXT + tenant, "sha256").ljust(
            _SHA256_BLOCK, b"\0"
        )
        self._inner = hashlib.sha256(bytes(b ^ 0x36 for b in key))
        self._outer = hashlib.sha256(bytes(b ^ 0x5C for b in key))

    def _mac(self, message: bytes) -> bytes:
        inner = self._inner.copy()
        inner.update(message)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.digest()[:ID_BYTES]

    def household_id(self, client_ip: str) -> bytes:
        """16 bytes identifying the normalised IP within the tenant."""
        # _mac inlined: ingestion hashes every record's address.
        inner = self._inner.copy()
        inner.update(normalise_ip(client_ip).encode())
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.digest()[:ID_BYTES]

    def listener_id(self, client_ip: str, user_agent: str) -> bytes:
        """16 bytes identifying normalised IP + User-Agent within the tenant."""
        return self.ids(client_ip, user_agent)[0]

    def ids(self, client_ip: str, user_agent: str) -> tuple[bytes, bytes]:
        """``(listener_id, household_id)``; raises :class:`InvalidIpError` for garbage."""
        normal = normalise_ip(client_ip)
        listener = self._mac(f"{normal}\0{user_agent}".encode("utf-8", "surrogatepass"))
        return listener, self._mac(normal.encode())


class IpExclusions:
    """A tenant's excluded CIDR ranges (data centres, own monitoring), matched per address.

    Lookups cost one set probe per distinct prefix length, not one test per range.
    """

    __slots__ = ("_v4", "_v6", "ranges")

    def __init__(self, cidrs: Iterable[str] = ()) -> None:
        by_length: dict[tuple[int, int], set[int]] = {}
        ranges: list[str] = []
        for cidr in cidrs:
            try:
                network = ip_network(cidr.strip(), strict=True)
            except ValueError as error:
                raise ValueError(f"not a CIDR range: {cidr[:64]!r} ({error})") from None
            bits = network.max_prefixlen - network.prefixlen
            by_length.setdefault((network.version, bits), set()).add(
                int(network.network_address) >> bits
            )
            ranges.append(str(network))
        self.ranges = tuple(ranges)
        """The ranges in canonical form."""
        self._v4 = tuple((bits, frozenset(nets)) for (v, bits), nets in by_length.items() if v == 4)
        self._v6 = tuple((bits, frozenset(nets)) for (v, bits), nets in by_length.items() if v == 6)

    def __bool__(self) -> bool:
        return bool(self.ranges)

    def contains(self, client_ip: str) -> bool:
        """True when the address lies in one of the ranges; raises for garbage."""
        if not self.ranges:
            return False
        packed = _packed(client_ip)
        value = int.from_bytes(packed, "big")
        tables = self._v4 if len(packed) == 4 else self._v6
        return any(value >> bits in networks for bits, networks in tables)
