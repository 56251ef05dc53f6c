"""The address of the client behind a request, as far as it can be trusted.

Envoy is the edge (`use_remote_address`): it sets `x-envoy-external-address` to the
client address it trusts (the connection's peer, or the entry `trusted_proxy_hops`
from the right of `x-forwarded-for`), removing any such header a client sent, and
appends to `x-forwarded-for`, whose last entry is then the client as Envoy saw it,
except for a loopback peer, for which Envoy appends its own host's address. Entries
a client wrote are ignored. A call with neither header comes straight from inside
the mesh, and its peer address stands.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

# An IPv6 subscriber typically holds a whole /64: limits per address apply to it.
_IPV6_PREFIX = 64


def client_address(metadata: Iterable[tuple[str, str | bytes]], peer: str) -> str:
    return normalised(client_ip(metadata, peer))


def client_ip(metadata: Iterable[tuple[str, str | bytes]], peer: str) -> str:
    """The client's address as Envoy saw it, not normalised: what household ids are
    hashed from (services.shared.client_ip normalises it itself)."""
    forwarded = external = ""
    for key, value in metadata:
        if key == "x-forwarded-for" and isinstance(value, str):
            forwarded = value
        elif key == "x-envoy-external-address" and isinstance(value, str):
            external = value
    if external:
        return external.strip()
    if forwarded:
        return forwarded.rsplit(",", 1)[-1].strip()
    return _peer_host(peer)


def normalised(text: str) -> str:
    """One spelling per client: IPv4 as is, IPv6 as its /64 network."""
    text = text.strip()
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        # Not an address (a Unix socket peer, a garbled header): kept, but bounded.
        return text[:64] or "unknown"
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.ip_network(f"{address}/{_IPV6_PREFIX}", strict=False))
    return str(address)


def _peer_host(peer: str) -> str:
    # gRPC peers look like "ipv4:127.0.0.1:5000" or "ipv6:[::1]:5000".
    kind, _, rest = peer.partition(":")
    if kind == "ipv4":
        return rest.rsplit(":", 1)[0]
    if kind == "ipv6":
        return rest.rsplit(":", 1)[0].strip("[]")
    return peer
