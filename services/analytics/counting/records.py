"""The records counting reads (listener requests) and writes (downloads, ads delivered).

A :class:`ListenerRequest` is one HTTP request for an episode's media file,
already past ingestion's validation and already anonymised: the client IP is
gone, replaced by the listener id (normalised IP + User-Agent) and household
id (normalised IP), and by the answer to the tenant's IP exclusions, which can
only be asked while the raw IP is at hand. :meth:`ListenerRequest.from_raw`
does that on arrival.

Invariant the counting relies on: requests with the same ``listener_id`` have
the same ``user_agent`` (the id is a hash of it).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from services.shared.client_ip import IpExclusions, IpHasher

from .user_agents import DeviceClass
from .windows import from_us

UNKNOWN_COUNTRY = "ZZ"


@dataclass(frozen=True, slots=True)
class ListenerRequest:
    """One anonymised listener request, as stored raw and as counted."""

    request_id: str
    """Client-supplied, unique per tenant: the idempotency key."""
    time_us: int
    """When the request arrived, microseconds since the epoch (UTC)."""
    episode_id: str
    listener_id: bytes
    household_id: bytes
    user_agent: str
    method: str = "GET"
    status: int = 200
    range_header: str = ""
    """The Range header as sent; empty for a request of the whole file."""
    bytes_served: int = 0
    country: str = UNKNOWN_COUNTRY
    """ISO 3166-1 alpha-2, upper case; ``"ZZ"`` when unknown."""
    ip_excluded: bool = False
    """The client IP was in one of the tenant's excluded ranges on arrival."""
    referer: str = ""
    """The Referer header; names the web player when the User-Agent is a browser."""

    @classmethod
    def from_raw(
        cls,
        *,
        request_id: str,
        time_us: int,
        episode_id: str,
        client_ip: str,
        user_agent: str,
        hasher: IpHasher,
        exclusions: IpExclusions | None = None,
        method: str = "GET",
        status: int = 200,
        range_header: str = "",
        bytes_served: int = 0,
        country_code: str = "",
        referer: str = "",
    ) -> ListenerRequest:
        """Builds the record from a request as received; the raw IP goes no further.

        Raises :class:`~.ip.InvalidIpError` when ``client_ip`` is not an address.
        """
        listener_id, household_id = hasher.ids(client_ip, user_agent)
        return cls(
            request_id=request_id,
            time_us=time_us,
            episode_id=episode_id,
            listener_id=listener_id,
            household_id=household_id,
            user_agent=user_agent,
            method=method,
            status=status,
            range_header=range_header,
            bytes_served=bytes_served,
            country=country_code.strip().upper() or UNKNOWN_COUNTRY,
            ip_excluded=exclusions.contains(client_ip) if exclusions else False,
            referer=referer,
        )


@dataclass(frozen=True, slots=True)
class Download:
    """One counted download: a listener, an episode and a counting window.

    Its time is the listener's first countable request in the window, and the
    breakdown values (app, device, OS, country) are that request's.
    """

    listener_id: bytes
    household_id: bytes
    episode_id: str
    window_start_us: int
    time_us: int
    app: str
    device_class: DeviceClass
    os: str
    country: str

    @property
    def time(self) -> datetime:
        """:attr:`time_us` as an aware UTC datetime."""
        return from_us(self.time_us)

    @property
    def window_start(self) -> datetime:
        """:attr:`window_start_us` as an aware UTC datetime."""
        return from_us(self.window_start_us)

    def sort_key(self) -> tuple[int, str, bytes, int]:
        """The order results are reported in."""
        return self.time_us, self.episode_id, self.listener_id, self.window_start_us


@dataclass(frozen=True, slots=True)
class AdDelivery:
    """An ad slot delivered within a counted download; it shares the download's time."""

    download: Download
    slot_id: str

    def sort_key(self) -> tuple[tuple[int, str, bytes, int], str]:
        """The order results are reported in."""
        return self.download.sort_key(), self.slot_id
