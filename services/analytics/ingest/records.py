"""Listener request records as they arrive: checked one by one, anonymised, made rows.

A batch is checked record by record; a bad record is rejected with one reason (the
cheap checks run first, hashing the client IP last) and the rest of the batch goes
on. A good record leaves here as a raw row for `listener_requests` and as the
anonymised request counting reads: its client IP is turned into listener and
household ids and the answer to the tenant's IP exclusions, and goes no further.
"""

from __future__ import annotations

import asyncio
import operator
import re
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from podmesh.analytics.v1 import analytics_pb2 as pb

from services.analytics.counting import (
    UNKNOWN_COUNTRY,
    InvalidIpError,
    IpExclusions,
    IpHasher,
    ListenerRequest,
    RangeError,
    first_range,
    from_us,
)

MAX_REQUEST_ID_LENGTH = 128
YIELD_EVERY = 250
MAX_TEXT_LENGTH = 2048
FUTURE_TOLERANCE_US = 5 * 60 * 1_000_000

# The columns of listener_requests, in the order rows are built.
RAW_COLUMNS = (
    "tenant_id",
    "request_time",
    "episode_id",
    "bytes_served",
    "status_code",
    "ip_excluded",
    "request_id",
    "listener_id",
    "household_id",
    "http_method",
    "range_header",
    "user_agent",
    "referer",
    "country_code",
    "region_code",
)
Reason = pb.RejectionReason
RawRow = tuple[
    uuid.UUID, datetime, str, int, int, bool, str, bytes, bytes, str, str, str, str, str, str
]

# Every text field of a record, read once: a NUL in any of them rejects the record.
TEXT_FIELDS = (
    "id",
    "episode_id",
    "media_url",
    "client_ip",
    "user_agent",
    "referer",
    "http_method",
    "range",
    "country_code",
    "region_code",
)
_texts = operator.attrgetter(*TEXT_FIELDS)

# RFC 9110 section 5.6.2: a method is a token.
_METHOD = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]{1,32}")
_COMMON_METHODS = frozenset({"GET", "HEAD"})
# What players send nearly always; anything else goes through the full parser.
_SIMPLE_RANGE = re.compile(r"bytes=(\d{1,18})-(\d{1,18})?")
_REGION = re.compile(r"([A-Z]{2})-[A-Z0-9]{1,3}")
# ISO 3166-1 alpha-2, officially assigned, plus ZZ, which the API itself uses for
# "unknown" and so must accept back.
_ISO_3166_1 = """
    AD AE AF AG AI AL AM AO AQ AR AS AT AU AW AX AZ BA BB BD BE BF BG BH BI BJ BL BM BN
    BO BQ BR BS BT BV BW BY BZ CA CC CD CF CG CH CI CK CL CM CN CO CR CU CV CW CX CY CZ
    DE DJ DK DM DO DZ EC EE EG EH ER ES ET FI FJ FK FM FO FR GA GB GD GE GF GG GH GI GL
    GM GN GP GQ GR GS GT GU GW GY HK HM HN HR HT HU ID IE IL IM IN IO IQ IR IS IT JE JM
    JO JP KE KG KH KI KM KN KP KR KW KY KZ LA LB LC LI LK LR LS LT LU LV LY MA MC MD ME
    MF MG MH MK ML MM MN MO MP MQ MR MS MT MU MV MW MX MY MZ NA NC NE NF NG NI NL NO NP
    NR NU NZ OM PA PE PF PG PH PK PL PM PN PR PS PT PW PY QA RE RO RS RU RW SA SB SC SD
    SE SG SH SI SJ SK SL SM SN SO SR SS ST SV SX SY SZ TC TD TF TG TH TJ TK TL TM TN TO
    TR TT TV TW TZ UA UG UM US UY UZ VA VC VE VG VI VN VU WF WS YE YT ZA ZM ZW ZZ
"""
COUNTRIES = frozenset(_ISO_3166_1.split())


@dataclass(frozen=True, slots=True)
class Rejected:
    index: int
    request_id: str
    reason: Reason
    message: str


@dataclass(frozen=True, slots=True)
class Episode:
    """What ingestion needs of a resolved episode; media facts go to counting."""

    episode_id: str
    podcast_id: str


@dataclass(slots=True)
class CheckedBatch:
    """One batch after checking: rows to store, requests to count, what was refused."""

    rows: list[RawRow] = field(default_factory=list)
    # Parallel to rows.
    requests: list[ListenerRequest] = field(default_factory=list)
    rejections: list[Rejected] = field(default_factory=list)
    # Records repeating an earlier record of the same batch (same id and time).
    duplicates: int = 0
    # Their (episode id, request time), for the counting funnel.
    repeated: list[tuple[str, int]] = field(default_factory=list)


def episode_references(records: Iterable[pb.ListenerRequest]) -> tuple[set[str], set[str]]:
    """The episode ids (canonical UUIDs) and media URLs a batch names, to resolve at once.

    Ids that are not UUIDs are left out: no episode has them, and the records naming
    them are rejected as unknown without asking the catalog.
    """
    given: set[str] = set()
    urls: set[str] = set()
    for record in records:
        if "\0" in "".join(_texts(record)):
            continue
        which = record.WhichOneof("episode")
        if which == "episode_id":
            given.add(record.episode_id)
        elif which == "media_url":
            urls.add(record.media_url)
    ids = {canonical for text in given if (canonical := canonical_uuid(text)) is not None}
    return ids, {url for url in urls if url and len(url) <= MAX_TEXT_LENGTH}


def canonical_uuid(text: str) -> str | None:
    try:
        return str(uuid.UUID(text))
    except ValueError:
        return None


async def check_batch(
    records: Sequence[pb.ListenerRequest],
    *,
    tenant_id: uuid.UUID,
    by_id: Mapping[str, Episode],
    by_url: Mapping[str, Episode],
    hasher: IpHasher,
    exclusions: IpExclusions,
    now_us: int,
    oldest_us: int,
) -> CheckedBatch:
    """Checks and anonymises a batch; `by_id` is keyed by canonical UUID.

    Gives the event loop a turn every few hundred records: a whole batch is tens of
    milliseconds of work, which would hold up the transactions waiting on the loop.
    """
    batch = CheckedBatch()
    rows = batch.rows
    requests = batch.requests
    rejections = batch.rejections
    latest_us = now_us + FUTURE_TOLERANCE_US
    seen: set[tuple[str, int]] = set()
    # Batch-local: repeated requests of one client are hashed once, and nothing of a
    # raw IP outlives the batch.
    ids_memo: dict[tuple[str, str], tuple[bytes, bytes]] = {}
    excluded_memo: dict[str, bool] = {}
    id_memo: dict[str, str | None] = {}
    location_memo: dict[tuple[str, str], tuple[str, str, tuple[Reason, str] | None]] = {}

    for index, record in enumerate(records):
        if index % YIELD_EVERY == YIELD_EVERY - 1:
            await asyncio.sleep(0)
        texts = _texts(record)
        (
            request_id,
            episode_id,
            media_url,
            client_ip,
            user_agent,
            referer,
            method,
            range_header,
            country_code,
            region_code,
        ) = texts
        problem: tuple[Reason, str] | None = None
        if "\0" in "".join(texts):
            poisoned = next(
                name for name, text in zip(TEXT_FIELDS, texts, strict=True) if "\0" in text
            )
            # The id goes back only when it is not what holds the NUL.
            request_id = "" if poisoned == "id" else request_id
            problem = (pb.REJECTION_REASON_INVALID_TEXT, f"{poisoned} contains a NUL character")
        elif not request_id or len(request_id) > MAX_REQUEST_ID_LENGTH:
            problem = (
                pb.REJECTION_REASON_INVALID_ID,
                f"id must be 1 to {MAX_REQUEST_ID_LENGTH} characters",
            )
        elif not record.HasField("request_time"):
            problem = (pb.REJECTION_REASON_MISSING_TIME, "request_time is required")
        if problem is not None:
            rejections.append(Rejected(index, request_id, *problem))
            continue
        stamp = record.request_time
        time_us = stamp.seconds * 1_000_000 + stamp.nanos // 1000
        if time_us > latest_us:
            rejections.append(
                Rejected(
                    index,
                    request_id,
                    pb.REJECTION_REASON_TIME_IN_FUTURE,
                    f"request_time {from_us(time_us).isoformat()} is more than 5 minutes ahead",
                )
            )
            continue
        if time_us < oldest_us:
            rejections.append(
                Rejected(
                    index,
                    request_id,
                    pb.REJECTION_REASON_TIME_TOO_OLD,
                    f"request_time {from_us(time_us).isoformat()} is older than the "
                    f"raw-data retention (oldest accepted {from_us(oldest_us).isoformat()})",
                )
            )
            continue

        which = record.WhichOneof("episode")
        episode: Episode | None = None
        if which == "episode_id":
            given = episode_id
            if given not in id_memo:
                id_memo[given] = canonical_uuid(given)
            canonical = id_memo[given]
            if not given:
                problem = (pb.REJECTION_REASON_MISSING_EPISODE, "episode_id is empty")
            elif canonical is None or (episode := by_id.get(canonical)) is None:
                problem = (
                    pb.REJECTION_REASON_UNKNOWN_EPISODE,
                    f"no episode has the id {given[:64]!r}",
                )
        elif which == "media_url":
            url = media_url
            if not url:
                problem = (pb.REJECTION_REASON_MISSING_EPISODE, "media_url is empty")
            elif len(url) > MAX_TEXT_LENGTH:
                problem = (
                    pb.REJECTION_REASON_FIELD_TOO_LONG,
                    f"media_url is longer than {MAX_TEXT_LENGTH} characters",
                )
            elif (episode := by_url.get(url)) is None:
                problem = (
                    pb.REJECTION_REASON_UNKNOWN_EPISODE,
                    f"no episode has the media URL {url[:200]!r}",
                )
        else:
            problem = (pb.REJECTION_REASON_MISSING_EPISODE, "set episode_id or media_url")
        if problem is not None:
            rejections.append(Rejected(index, request_id, *problem))
            continue
        assert episode is not None

        status = record.status_code
        bytes_served = record.bytes_served
        if len(user_agent) > MAX_TEXT_LENGTH or len(referer) > MAX_TEXT_LENGTH:
            problem = (
                pb.REJECTION_REASON_FIELD_TOO_LONG,
                f"user_agent or referer is longer than {MAX_TEXT_LENGTH} characters",
            )
        elif method not in _COMMON_METHODS and not _METHOD.fullmatch(method):
            problem = (
                pb.REJECTION_REASON_INVALID_METHOD,
                f"{method[:32]!r} is not an HTTP method" if method else "http_method is required",
            )
        elif not 100 <= status <= 599:
            problem = (
                pb.REJECTION_REASON_INVALID_STATUS,
                f"status_code {status} is not between 100 and 599",
            )
        elif range_header and not is_byte_range(range_header):
            problem = (
                pb.REJECTION_REASON_INVALID_RANGE,
                f"range {range_header[:80]!r} is not a byte range",
            )
        elif bytes_served < 0:
            problem = (
                pb.REJECTION_REASON_INVALID_BYTES_SERVED,
                "bytes_served must not be negative",
            )
        location_key = (country_code, region_code)
        location = location_memo.get(location_key)
        if location is None:
            location = location_memo[location_key] = _location(*location_key)
        country, region, location_problem = location
        problem = problem or location_problem
        if problem is not None:
            rejections.append(Rejected(index, request_id, *problem))
            continue
        key = (client_ip, user_agent)
        ids = ids_memo.get(key)
        if ids is None:
            try:
                ids = ids_memo[key] = hasher.ids(client_ip, user_agent)
            except InvalidIpError:
                message = "client_ip is required" if not client_ip else "client_ip is not an IP"
                rejections.append(
                    Rejected(index, request_id, pb.REJECTION_REASON_INVALID_CLIENT_IP, message)
                )
                continue

        identity = (request_id, time_us)
        if identity in seen:
            batch.duplicates += 1
            batch.repeated.append((episode.episode_id, time_us))
            continue
        seen.add(identity)
        excluded = False
        if exclusions:
            excluded_here = excluded_memo.get(client_ip)
            if excluded_here is None:
                excluded_here = excluded_memo[client_ip] = exclusions.contains(client_ip)
            excluded = excluded_here
        listener_id, household_id = ids
        rows.append(
            (
                tenant_id,
                from_us(time_us),
                episode.episode_id,
                bytes_served,
                status,
                excluded,
                request_id,
                listener_id,
                household_id,
                method,
                range_header,
                user_agent,
                referer,
                country,
                region,
            )
        )
        requests.append(
            ListenerRequest(
                request_id,
                time_us,
                episode.episode_id,
                listener_id,
                household_id,
                user_agent,
                method,
                status,
                range_header,
                bytes_served,
                country or UNKNOWN_COUNTRY,
                excluded,
                referer,
            )
        )
    return batch


def is_byte_range(header: str) -> bool:
    """Whether a Range header is a valid bytes range set (RFC 9110 section 14.1.2)."""
    simple = _SIMPLE_RANGE.fullmatch(header)
    if simple is not None:
        last = simple.group(2)
        return last is None or int(last) >= int(simple.group(1))
    try:
        first_range(header)
    except RangeError:
        return False
    return True


def _location(country_code: str, region_code: str) -> tuple[str, str, tuple[Reason, str] | None]:
    """Upper-cased codes ('' when not given), or the reason they are not ISO 3166."""
    country = country_code.strip().upper()
    region = region_code.strip().upper()
    if country and country not in COUNTRIES:
        return (
            "",
            "",
            (
                pb.REJECTION_REASON_INVALID_LOCATION,
                f"country_code {country_code[:16]!r} is not an ISO 3166-1 alpha-2 code",
            ),
        )
    if region:
        match = _REGION.fullmatch(region)
        if match is None or match.group(1) not in COUNTRIES:
            return (
                "",
                "",
                (
                    pb.REJECTION_REASON_INVALID_LOCATION,
                    f"region_code {region_code[:16]!r} is not an ISO 3166-2 code",
                ),
            )
        if country and match.group(1) != country:
            return (
                "",
                "",
                (
                    pb.REJECTION_REASON_INVALID_LOCATION,
                    f"region_code {region!r} is not in country {country!r}",
                ),
            )
    if country == UNKNOWN_COUNTRY:
        country = ""
    return country, region, None
