"""CDN access log parsers: each log line becomes one ListenerRequest.

Formats and the fields each needs are documented in FORMATS (and the README). Reading
is streaming: a file is read line by line (gzip decompressed as a stream, recognised by
its magic bytes), so memory does not grow with the file. What cannot be used is never
dropped silently:

- a field the format needs that the file does not have (a CloudFront `#Fields` header
  without it, a JSON record without the key) is a `LogFormatError` naming the field:
  the logging is configured wrongly, so the import stops;
- a line that cannot be read is counted in `ParseStats.malformed` by reason, with the
  first few line numbers kept for the report;
- a well-formed line that is not a media request (an S3 bucket operation) is counted in
  `ParseStats.ignored` by reason.

Record ids make an import idempotent: the CDN's own request id where the log has one
(CloudFront, Cloudflare, Fastly, S3), otherwise the file's identity (a hash of its first
line, which holds a time and an address) and the line's byte offset (nginx, Apache).
Importing a file again, or a copy under another name, sends the same ids.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import re
import zlib
from calendar import timegm
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from operator import itemgetter
from pathlib import Path
from typing import IO, Any, cast
from urllib.parse import unquote

from podmesh.analytics.v1 import analytics_pb2 as pb

MAX_EXAMPLES = 10
_GZIP_MAGIC = b"\x1f\x8b"
_MONTHS = {
    m: i + 1
    for i, m in enumerate(
        ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
    )
}


class LogFormatError(Exception):
    """The file cannot be imported in this format (a field it needs is missing, or
    the file is truncated); the message names the file and what is wrong."""


class Malformed(Exception):
    """One line cannot be read; the message is the reason it is counted under."""


@dataclass
class ParseStats:
    lines: int = 0
    records: int = 0
    malformed: Counter[str] = field(default_factory=Counter)
    ignored: Counter[str] = field(default_factory=Counter)
    # (file, line number, reason) of the first malformed lines.
    examples: list[tuple[str, int, str]] = field(default_factory=list)

    def bad_line(self, file: str, number: int, reason: str) -> None:
        self.malformed[reason] += 1
        if len(self.examples) < MAX_EXAMPLES:
            self.examples.append((file, number, reason))


@dataclass(frozen=True)
class Source:
    """The file being read: its label for messages, and its identity (offset ids)."""

    label: str
    identity: str


@dataclass(frozen=True)
class ImportOptions:
    """`media_host` replaces the host of every media URL (e.g. the feed's CDN name
    when the log records an origin or bucket host); `default_host` is used only when
    a line has no host at all (plain combined logs)."""

    media_host: str = ""
    default_host: str = ""
    scheme: str = "https"


def open_lines(path: Path) -> tuple[IO[bytes], str]:
    """A binary line stream of the file (gunzipped when it is gzip) and its label."""
    raw = path.open("rb")
    head = raw.peek(2)[:2] if isinstance(raw, io.BufferedReader) else b""
    if head == _GZIP_MAGIC:
        return cast(IO[bytes], gzip.GzipFile(fileobj=raw, mode="rb")), str(path)
    return raw, str(path)


def _epoch_of_day(cache: dict[Any, int], key: Any, make: Callable[[], int]) -> int:
    found = cache.get(key)
    if found is None:
        found = cache[key] = make()
    return found


def _set_time(record: pb.ListenerRequest, seconds: int, nanos: int = 0) -> None:
    record.request_time.seconds = seconds
    record.request_time.nanos = nanos


def _media_url(options: ImportOptions, host: str, path: str) -> str:
    host = options.media_host or host or options.default_host
    if not host:
        raise Malformed("no host (log the Host header or pass --default-host)")
    if not path.startswith("/"):
        raise Malformed("request path is not absolute")
    return f"{options.scheme}://{host}{path}"


def _int(value: str, name: str) -> int:
    if value in ("-", ""):
        return 0
    try:
        return int(value)
    except ValueError:
        raise Malformed(f"{name} is not a number") from None


# --- CloudFront standard logs (W3C extended, tab separated, usually gzip) ---------------

CLOUDFRONT_REQUIRED = (
    "date",
    "time",
    "c-ip",
    "cs-method",
    "cs-uri-stem",
    "sc-status",
    "sc-bytes",
    "x-edge-request-id",
)


def _cloudfront(
    stream: IO[bytes], source: Source, options: ImportOptions, stats: ParseStats
) -> Iterator[pb.ListenerRequest]:
    label = source.label
    columns: dict[str, int] | None = None
    pick: Callable[[list[str]], tuple[str, ...]] | None = None
    days: dict[str, int] = {}
    texts: dict[str, str] = {}
    for number, raw_line in enumerate(stream, 1):
        stats.lines += 1
        line = raw_line.decode("utf-8", "replace").rstrip("\r\n")
        if line.startswith("#"):
            if line.startswith("#Fields:"):
                names = line[len("#Fields:") :].split()
                missing = [name for name in CLOUDFRONT_REQUIRED if name not in names]
                if missing:
                    raise LogFormatError(
                        f"{label}: the #Fields header lacks {', '.join(missing)} "
                        "(needed by the cloudfront format)"
                    )
                columns = {name: position for position, name in enumerate(names)}
                pick = itemgetter(*(columns.get(name, -1) for name in _CLOUDFRONT_USED))
            continue
        if not line:
            continue
        if columns is None or pick is None:
            raise LogFormatError(f"{label}: no #Fields header before the first record")
        values = line.split("\t")
        if len(values) != len(columns):
            stats.bad_line(label, number, f"{len(values)} fields, the header names {len(columns)}")
            continue
        try:
            yield _cloudfront_record(values, pick, days, texts, options)
            stats.records += 1
        except Malformed as error:
            stats.bad_line(label, number, str(error))


# In this order, the values `_cloudfront_record` unpacks.
_CLOUDFRONT_USED = (
    *CLOUDFRONT_REQUIRED,
    "x-host-header",
    "cs(Host)",
    "sc-content-len",
    "sc-range-start",
    "sc-range-end",
    "cs(User-Agent)",
    "cs(Referer)",
)
# Distinct User-Agents and Referers decoded and kept; a log has few of them, and the
# decoding was a third of the parser's time.
_MAX_DECODED = 65_536


def _decoded(texts: dict[str, str], value: str) -> str:
    """The URL-decoded text of a CloudFront field, '' for '-', cached."""
    found = texts.get(value)
    if found is None:
        if len(texts) >= _MAX_DECODED:
            texts.clear()
        found = texts[value] = _dash(unquote(value))
    return found


def _cloudfront_record(
    values: list[str],
    pick: Callable[[list[str]], tuple[str, ...]],
    days: dict[str, int],
    texts: dict[str, str],
    options: ImportOptions,
) -> pb.ListenerRequest:
    # Columns the header lacks are at index -1, the "-" appended to every row.
    values.append("-")
    (
        date, clock, client_ip, method, path, status, sc_bytes, request_id, host,
        host_header, content_length, start, end, user_agent, referer,
    ) = pick(values)  # fmt: skip
    try:
        day = days.get(date)
        if day is None:
            day = days[date] = timegm(datetime.strptime(date, "%Y-%m-%d").timetuple())
        hours, minutes, seconds = clock.split(":")
        at = day + int(hours) * 3600 + int(minutes) * 60 + int(seconds)
    except ValueError:
        raise Malformed("date or time is not YYYY-MM-DD HH:MM:SS") from None
    if host == "-":
        host = host_header
    sent = _int(sc_bytes, "sc-bytes")
    # sc-bytes includes the response headers; the body is at most Content-Length.
    if content_length != "-":
        sent = min(sent, _int(content_length, "sc-content-len"))
    record = pb.ListenerRequest(
        id="cf:" + request_id,
        media_url=_media_url(options, "" if host == "-" else host, path),
        client_ip=client_ip,
        user_agent=_decoded(texts, user_agent),
        referer=_decoded(texts, referer),
        http_method=method,
        status_code=_int(status, "sc-status"),
        range=f"bytes={start}-{end}" if start.isdigit() and end.isdigit() else "",
        bytes_served=sent,
    )
    _set_time(record, at)
    return record


def _dash(value: str) -> str:
    return "" if value == "-" else value


# --- JSON lines: Cloudflare Logpush (http_requests) and Fastly ---------------------------


@dataclass(frozen=True)
class JsonFields:
    """Which JSON key holds each value; `None` for values the format does not have."""

    name: str
    id: str
    time: str
    client_ip: str
    method: str
    host: str
    path: str
    status: str
    bytes: str
    user_agent: str
    referer: str
    range: str | None
    country: str | None
    id_prefix: str


CLOUDFLARE = JsonFields(
    name="cloudflare",
    id="RayID",
    time="EdgeStartTimestamp",
    client_ip="ClientIP",
    method="ClientRequestMethod",
    host="ClientRequestHost",
    path="ClientRequestURI",
    status="EdgeResponseStatus",
    bytes="EdgeResponseBodyBytes",
    user_agent="ClientRequestUserAgent",
    referer="ClientRequestReferer",
    range="RequestHeaders.range",
    country="ClientCountry",
    id_prefix="cfl:",
)
FASTLY = JsonFields(
    name="fastly",
    id="request_id",
    time="timestamp",
    client_ip="client_ip",
    method="method",
    host="host",
    path="url",
    status="status",
    bytes="body_bytes",
    user_agent="user_agent",
    referer="referer",
    range="range",
    country="country",
    id_prefix="fastly:",
)
_JSON_REQUIRED = ("id", "time", "client_ip", "method", "host", "path", "status", "bytes")


def _lookup(data: dict[str, Any], key: str) -> Any:
    if "." in key:
        outer, inner = key.split(".", 1)
        nested = data.get(outer)
        return nested.get(inner) if isinstance(nested, dict) else None
    return data.get(key)


def _json_time(value: Any) -> tuple[int, int]:
    if isinstance(value, int):
        # Logpush's unixnano (the default), unix seconds, or milliseconds.
        if value > 10**17:
            return value // 10**9, value % 10**9
        if value > 10**11:
            return value // 1000, value % 1000 * 10**6
        return value, 0
    if isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            raise Malformed("time is not RFC 3339") from None
        if moment.tzinfo is None:
            raise Malformed("time has no UTC offset")
        return timegm(moment.utctimetuple()), moment.microsecond * 1000
    raise Malformed("time is not a string or a number")


def _json_lines(fields: JsonFields) -> Callable[..., Iterator[pb.ListenerRequest]]:
    def parse(
        stream: IO[bytes], source: Source, options: ImportOptions, stats: ParseStats
    ) -> Iterator[pb.ListenerRequest]:
        label = source.label
        for number, raw_line in enumerate(stream, 1):
            stats.lines += 1
            if not raw_line.strip():
                continue
            try:
                data = json.loads(raw_line)
            except (ValueError, UnicodeDecodeError):
                stats.bad_line(label, number, "not JSON")
                continue
            if not isinstance(data, dict):
                stats.bad_line(label, number, "not a JSON object")
                continue
            for attribute in _JSON_REQUIRED:
                key = getattr(fields, attribute)
                if _lookup(data, key) is None:
                    raise LogFormatError(
                        f"{label}:{number}: field {key} is missing "
                        f"(needed by the {fields.name} format)"
                    )
            try:
                yield _json_record(data, fields, options)
                stats.records += 1
            except Malformed as error:
                stats.bad_line(label, number, str(error))

    return parse


def _json_record(
    data: dict[str, Any], fields: JsonFields, options: ImportOptions
) -> pb.ListenerRequest:
    seconds, nanos = _json_time(_lookup(data, fields.time))
    status, sent = _lookup(data, fields.status), _lookup(data, fields.bytes)
    if not isinstance(status, int) or not isinstance(sent, int):
        raise Malformed(f"{fields.status} or {fields.bytes} is not a number")
    path = str(_lookup(data, fields.path))
    record = pb.ListenerRequest(
        id=fields.id_prefix + str(_lookup(data, fields.id)),
        media_url=_media_url(options, str(_lookup(data, fields.host)), path),
        client_ip=str(_lookup(data, fields.client_ip)),
        user_agent=str(_lookup(data, fields.user_agent) or ""),
        referer=str(_lookup(data, fields.referer) or ""),
        http_method=str(_lookup(data, fields.method)),
        status_code=status,
        range=str((_lookup(data, fields.range) if fields.range else None) or ""),
        bytes_served=sent,
        country_code=str((_lookup(data, fields.country) if fields.country else None) or "").upper(),
    )
    _set_time(record, seconds, nanos)
    return record


# --- nginx and Apache: combined, optionally with the Range header and the host ----------

_QUOTED = r'"((?:[^"\\]|\\.)*)"'
_COMBINED = re.compile(
    r"^(\S+) \S+ \S+ \[([^\]]+)\] "
    + _QUOTED
    + r" (\d{3}) (\d+|-) "
    + _QUOTED
    + " "
    + _QUOTED
    + r"(?: "
    + _QUOTED
    + r")?(?: \"?([^\"\s]*)\"?)?\s*$"
)


def _clf_time(value: str, cache: dict[str, int]) -> int:
    # 10/Oct/2000:13:55:36 -0700
    try:
        date, hours, minutes, rest = value.split(":", 3)
        seconds, zone = rest.split(" ")
        key = date + zone

        def make() -> int:
            day, month, year = date.split("/")
            offset = (int(zone[1:3]) * 3600 + int(zone[3:5]) * 60) * (-1 if zone[0] == "-" else 1)
            return timegm((int(year), _MONTHS[month], int(day), 0, 0, 0)) - offset

        return (
            _epoch_of_day(cache, key, make) + int(hours) * 3600 + int(minutes) * 60 + int(seconds)
        )
    except (ValueError, KeyError, IndexError):
        raise Malformed("time is not [dd/Mon/yyyy:HH:MM:SS +zzzz]") from None


def _unescape(value: str) -> str:
    if "\\" not in value:
        return value
    return value.replace('\\"', '"').replace("\\x22", '"').replace("\\\\", "\\")


def file_identity(path: Path) -> str:
    """A file's identity for offset-based ids: the hash of its first line."""
    stream, _ = open_lines(path)
    with stream:
        try:
            first = stream.readline()
        except (EOFError, OSError, zlib.error):
            first = b""
    return hashlib.blake2b(first, digest_size=8).hexdigest()


def _combined(
    stream: IO[bytes], source: Source, options: ImportOptions, stats: ParseStats, prefix: str
) -> Iterator[pb.ListenerRequest]:
    label = source.label
    days: dict[str, int] = {}
    offset = 0
    for number, raw_line in enumerate(stream, 1):
        stats.lines += 1
        at_offset = offset
        offset += len(raw_line)
        line = raw_line.decode("utf-8", "replace").rstrip("\r\n")
        if not line.strip():
            continue
        match = _COMBINED.match(line)
        if match is None:
            stats.bad_line(label, number, "not a combined log line")
            continue
        ip, when, request, status, sent, referer, agent, range_header, host = match.groups()
        parts = _unescape(request).split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            stats.bad_line(label, number, "request line is not METHOD PATH PROTOCOL")
            continue
        try:
            record = pb.ListenerRequest(
                id=f"{prefix}{at_offset}",
                media_url=_media_url(options, "" if host in (None, "-") else host, parts[1]),
                client_ip=ip,
                user_agent=_dash(_unescape(agent)),
                referer=_dash(_unescape(referer)),
                http_method=parts[0],
                status_code=int(status),
                range=_dash(_unescape(range_header or "")),
                bytes_served=_int(sent, "bytes sent"),
            )
            _set_time(record, _clf_time(when, days))
        except Malformed as error:
            stats.bad_line(label, number, str(error))
            continue
        stats.records += 1
        yield record


# --- S3 server access logs ---------------------------------------------------------------

_S3_TOKEN = re.compile(r'\[[^\]]*\]|"(?:[^"\\]|\\.)*"|\S+')
_S3_OBJECT_READS = {"REST.GET.OBJECT": "GET", "REST.HEAD.OBJECT": "HEAD"}
# Positions in AWS's documented field order.
_S3 = {
    "time": 2,
    "remote_ip": 3,
    "request_id": 5,
    "operation": 6,
    "request_uri": 8,
    "http_status": 9,
    "bytes_sent": 11,
    "referer": 15,
    "user_agent": 16,
    "host_header": 22,
}


def _s3(
    stream: IO[bytes], source: Source, options: ImportOptions, stats: ParseStats
) -> Iterator[pb.ListenerRequest]:
    label = source.label
    days: dict[str, int] = {}
    for number, raw_line in enumerate(stream, 1):
        stats.lines += 1
        line = raw_line.decode("utf-8", "replace").rstrip("\r\n")
        if not line.strip():
            continue
        tokens = _S3_TOKEN.findall(line)
        if len(tokens) <= _S3["user_agent"]:
            stats.bad_line(label, number, f"{len(tokens)} fields, S3 logs have at least 18")
            continue
        operation = tokens[_S3["operation"]]
        method = _S3_OBJECT_READS.get(operation)
        if method is None:
            stats.ignored[f"S3 operation {operation} is not an object read"] += 1
            continue
        try:
            when = tokens[_S3["time"]]
            if not (when.startswith("[") and when.endswith("]")):
                raise Malformed("time is not [dd/Mon/yyyy:HH:MM:SS +zzzz]")
            uri = tokens[_S3["request_uri"]].strip('"').split(" ")
            if len(uri) != 3:
                raise Malformed("request URI is not METHOD PATH PROTOCOL")
            host = tokens[_S3["host_header"]] if len(tokens) > _S3["host_header"] else ""
            record = pb.ListenerRequest(
                id="s3:" + tokens[_S3["request_id"]],
                media_url=_media_url(options, _dash(host), uri[1]),
                client_ip=tokens[_S3["remote_ip"]],
                user_agent=_dash(_unescape(tokens[_S3["user_agent"]].strip('"'))),
                referer=_dash(_unescape(tokens[_S3["referer"]].strip('"'))),
                http_method=method,
                status_code=_int(tokens[_S3["http_status"]], "http_status"),
                bytes_served=_int(tokens[_S3["bytes_sent"]], "bytes_sent"),
            )
            _set_time(record, _clf_time(when[1:-1], days))
        except Malformed as error:
            stats.bad_line(label, number, str(error))
            continue
        stats.records += 1
        yield record


# --- the formats ------------------------------------------------------------------------

Parser = Callable[[IO[bytes], "Source", ImportOptions, ParseStats], Iterator[pb.ListenerRequest]]


@dataclass(frozen=True)
class LogFormat:
    name: str
    description: str
    parse: Parser
    # Ids are the file identity and line offset (the log has no request id).
    offset_ids: bool = False


def _combined_format(name: str) -> Parser:
    def parse(
        stream: IO[bytes], source: Source, options: ImportOptions, stats: ParseStats
    ) -> Iterator[pb.ListenerRequest]:
        return _combined(stream, source, options, stats, f"{name}:{source.identity}:")

    return parse


FORMATS: dict[str, LogFormat] = {
    "cloudfront": LogFormat(
        "cloudfront",
        "CloudFront standard logs (W3C, tab separated, gzip); #Fields must include "
        + ", ".join(CLOUDFRONT_REQUIRED),
        _cloudfront,
    ),
    "cloudflare": LogFormat(
        "cloudflare",
        "Cloudflare Logpush http_requests as NDJSON; needs RayID, EdgeStartTimestamp, ClientIP, "
        "ClientRequestMethod, ClientRequestHost, ClientRequestURI, EdgeResponseStatus, "
        "EdgeResponseBodyBytes",
        _json_lines(CLOUDFLARE),
    ),
    "fastly": LogFormat(
        "fastly",
        "Fastly JSON logging with Podmesh's field set; needs request_id, timestamp, client_ip, "
        "method, host, url, status, body_bytes",
        _json_lines(FASTLY),
    ),
    "nginx": LogFormat(
        "nginx",
        'nginx combined, optionally followed by "$http_range" and "$host"',
        _combined_format("nginx"),
        offset_ids=True,
    ),
    "apache": LogFormat(
        "apache",
        'Apache combined, optionally followed by "%{Range}i" and "%{Host}i"',
        _combined_format("apache"),
        offset_ids=True,
    ),
    "s3": LogFormat(
        "s3", "S3 server access logs (REST.GET.OBJECT and REST.HEAD.OBJECT lines)", _s3
    ),
}


def read_records(
    path: Path, format_name: str, options: ImportOptions, stats: ParseStats
) -> Iterator[pb.ListenerRequest]:
    """The file's records, streamed. Raises LogFormatError for a missing field or a
    truncated or corrupt gzip stream (records before the damage are yielded first)."""
    log_format = FORMATS[format_name]
    stream, label = open_lines(path)
    with stream:
        source = Source(label, file_identity(path) if log_format.offset_ids else "")
        records = log_format.parse(stream, source, options, stats)
        try:
            yield from records
        except EOFError:
            raise LogFormatError(
                f"{label}: the gzip stream is truncated after line {stats.lines}"
            ) from None
        except (gzip.BadGzipFile, zlib.error) as error:
            raise LogFormatError(
                f"{label}: corrupt gzip data after line {stats.lines}: {error}"
            ) from None


def batched(records: Iterator[pb.ListenerRequest], size: int) -> Iterator[list[pb.ListenerRequest]]:
    batch: list[pb.ListenerRequest] = []
    for record in records:
        batch.append(record)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch
