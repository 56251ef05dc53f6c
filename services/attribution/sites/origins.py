"""Which web pages may send a pixel's events: origins as browsers send them.

An allowed origin is normalised to ``scheme://host[:port]`` (lower case, IDNA host,
default ports dropped), so it compares exactly with the ``Origin`` header a browser
sends. A pixel without allowed origins accepts its sponsor's domain and every
subdomain of it, over https only.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from urllib.parse import urlsplit

MAX_ORIGINS = 50
MAX_ORIGIN_CHARS = 300
_DEFAULT_PORTS = {"http": 80, "https": 443}
_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")


class InvalidOrigin(ValueError):
    """Not an http(s) origin."""


def normalise_origin(text: str) -> str:
    """``scheme://host[:port]``: no path, query, fragment, user or wildcard."""
    if not text or len(text) > MAX_ORIGIN_CHARS or any(c.isspace() for c in text):
        raise InvalidOrigin("an origin looks like https://shop.example.com")
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as error:
        raise InvalidOrigin(f"not an origin: {error}") from None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS:
        raise InvalidOrigin("an origin's scheme is http or https")
    if parts.username is not None or parts.password is not None:
        raise InvalidOrigin("an origin has no user name or password")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise InvalidOrigin("an origin has no path, query or fragment")
    host = _host(parts.hostname or "")
    if port is not None and port == _DEFAULT_PORTS[scheme]:
        port = None
    shown = f"[{host}]" if ":" in host else host
    return f"{scheme}://{shown}" + (f":{port}" if port is not None else "")


def normalise_domain(text: str) -> str:
    """A bare host name such as a sponsor's domain, lower case and IDNA-encoded; ''
    when it is not one."""
    try:
        host = _host(text.strip().rstrip("."))
    except InvalidOrigin:
        return ""
    return "" if ":" in host or _is_ip(host) else host


def allowed(origin: str, allowed_origins: Sequence[str], sponsor_domain: str) -> bool:
    """Whether a request's Origin header may send events for a pixel."""
    try:
        origin = normalise_origin(origin)
    except InvalidOrigin:
        return False
    if allowed_origins:
        return origin in allowed_origins
    if not sponsor_domain or not origin.startswith("https://"):
        return False
    host = origin.removeprefix("https://").partition(":")[0]
    return host == sponsor_domain or host.endswith("." + sponsor_domain)


def _host(text: str) -> str:
    host = text.lower()
    if not host:
        raise InvalidOrigin("an origin names a host")
    if _is_ip(host):
        return str(ipaddress.ip_address(host))
    try:
        host = host.encode("idna").decode("ascii")
    except UnicodeError:
        raise InvalidOrigin("the host is not a valid domain name") from None
    labels = host.split(".")
    if not all(_LABEL.match(label) for label in labels):
        raise InvalidOrigin("the host is not a valid domain name (no wildcards)")
    return host


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
