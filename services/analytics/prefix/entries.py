"""What one access log entry of the prefix route says about a listener request."""

from __future__ import annotations

import functools
import re
import uuid
from dataclasses import dataclass
from urllib.parse import urlsplit

from envoy.config.core.v3 import base_pb2
from envoy.data.accesslog.v3 import accesslog_pb2

from services.shared.measurement_prefix import PATH_PREFIX, tenant_of_prefix

MAX_REQUEST_ID = 128
# The gateway refuses longer prefix paths (gateway/prefix_redirect.lua).
MAX_PATH = 2048
# As the gateway reads the path: /e/{prefix}/{optional scheme}{host[:port]}{rest}.
_PREFIX_PATH = re.compile(
    r"^/e/(?P<prefix>[^/?#]+)/(?:(?P<scheme>https?):/+)?(?P<target>[^/?#]+[^\s\\]*)$",
    re.IGNORECASE,
)
_METHODS = {number: name for name, number in base_pb2.RequestMethod.items()}
_AUTHORITY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.-]*(?::[0-9]+)?$")


@dataclass(frozen=True, slots=True)
class PrefixHit:
    tenant_id: uuid.UUID
    request_id: str
    time_us: int
    client_ip: str
    user_agent: str
    referer: str
    method: str
    range_header: str
    status: int
    media_url: str
    # host/path: the file, whatever the query string.
    media_key: str


# A feed's episodes are requested over and over by the same paths.
@functools.lru_cache(maxsize=4096)
def media_target(path: str) -> tuple[str, str, str] | None:
    """(prefix id, media URL, host/path) of a prefix path, or None when the gateway
    would not have redirected it."""
    if len(path) > MAX_PATH or not path.startswith(PATH_PREFIX):
        return None
    match = _PREFIX_PATH.match(path)
    if match is None:
        return None
    target = match["target"]
    parts = urlsplit("//" + target)
    if not _AUTHORITY.match(parts.netloc):
        return None
    scheme = (match["scheme"] or "https").lower()
    return match["prefix"], f"{scheme}://{target}", parts.netloc.lower() + (parts.path or "/")


def prefix_hit(entry: accesslog_pb2.HTTPAccessLogEntry) -> PrefixHit | None:
    """The listener request an entry reports, or None when it names no tenant (an
    unknown prefix: redirected, never counted) or no media URL."""
    request = entry.request
    target = media_target(_text(request.path))
    if target is None:
        return None
    prefix, media_url, media_key = target
    tenant_id = tenant_of_prefix(prefix)
    request_id = _text(request.request_id)[:MAX_REQUEST_ID]
    if tenant_id is None or not request_id:
        return None
    common = entry.common_properties
    started = common.start_time
    return PrefixHit(
        tenant_id=tenant_id,
        request_id=request_id,
        time_us=started.seconds * 1_000_000 + started.nanos // 1000,
        # The client as Envoy decided it (xff_num_trusted_hops), never a header.
        client_ip=common.downstream_remote_address.socket_address.address,
        user_agent=_text(request.user_agent),
        referer=_text(request.referer),
        method=_METHODS.get(request.request_method, "OTHER"),
        range_header=_text(request.request_headers.get("range", "")),
        status=entry.response.response_code.value,
        media_url=media_url,
        media_key=media_key,
    )


def _text(value: str) -> str:
    # PostgreSQL text cannot hold NUL; a header with one is kept without it.
    return value.replace("\x00", "")
