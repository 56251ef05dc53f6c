"""Feeds served over real HTTP on 127.0.0.1 for the catalog's import tests and
benchmark, and helpers to reach the catalog."""

from __future__ import annotations

import socket
import threading
from collections import Counter
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Self

from google.protobuf.duration_pb2 import Duration

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "feeds"


@dataclass(frozen=True)
class Route:
    status: int = 200
    body: bytes = b""
    content_type: str = "application/rss+xml; charset=utf-8"
    location: str = ""
    # Without Content-Length the body ends when the connection closes, so the
    # catalog must cap it while streaming.
    declare_length: bool = True


class FeedServer:
    """An HTTP server in a thread, answering from routes set by the test."""

    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}
        self.hits: Counter[str] = Counter()
        routes, hits = self.routes, self.hits

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                hits[path] += 1
                route = routes.get(path, Route(status=404, body=b"not found"))
                self.send_response(route.status)
                if route.location:
                    self.send_header("Location", route.location)
                self.send_header("Content-Type", route.content_type)
                if route.declare_length:
                    self.send_header("Content-Length", str(len(route.body)))
                self.end_headers()
                try:
                    for start in range(0, len(route.body), 64 * 1024):
                        self.wfile.write(route.body[start : start + 64 * 1024])
                except (BrokenPipeError, ConnectionResetError):
                    return  # the catalog stopped reading at its size cap

            def log_message(self, format: str, *args: object) -> None:
                return None

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._server.shutdown()
        self._server.server_close()

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def url(self, path: str) -> str:
        return self.base_url + path

    def serve(
        self,
        path: str,
        body: bytes,
        *,
        content_type: str = Route.content_type,
        declare_length: bool = True,
    ) -> str:
        self.routes[path] = Route(
            body=body, content_type=content_type, declare_length=declare_length
        )
        return self.url(path)

    def serve_fixture(self, path: str, name: str) -> str:
        """A fixture file, its {{BASE}} pointing back at this server."""
        return self.serve(path, fixture(name, self.base_url))

    def redirect(self, path: str, to: str, status: int = 302) -> str:
        self.routes[path] = Route(status=status, location=to)
        return self.url(path)


def fixture(name: str, base_url: str = "http://127.0.0.1") -> bytes:
    return (FIXTURES / name).read_bytes().replace(b"{{BASE}}", base_url.encode())


class SilentServer:
    """Accepts TCP connections (the kernel completes the handshake) and never
    answers: a feed host that hangs."""

    def __init__(self) -> None:
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.bind(("127.0.0.1", 0))
        self._socket.listen(16)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._socket.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._socket.getsockname()[1]}/feed.xml"


def seconds(value: float) -> Duration:
    duration = Duration()
    duration.FromMilliseconds(round(value * 1000))
    return duration


def generated_feed(episodes: int, *, title: str = "Generated Show", host: str = "gen") -> bytes:
    """An RSS feed with `episodes` items, each with a distinct topic word."""
    topics = ["markets", "gardening", "astronomy", "history", "cycling", "chess", "jazz"]
    items = []
    for n in range(episodes):
        topic = topics[n % len(topics)]
        day = 1 + n % 28
        month = 1 + (n // 28) % 12
        year = 2020 + n // 336
        items.append(
            f"""<item><title>Episode {n}: notes on {topic}</title>
<description>&lt;p&gt;Conversation number {n} about {topic} and the people who love
{topic}.&lt;/p&gt;</description>
<guid isPermaLink="false">{host}-{n}</guid>
<pubDate>{day:02d} {_MONTHS[month - 1]} {year} 08:00:00 GMT</pubDate>
<enclosure url="https://cdn.{host}.example/audio/{n}.mp3" length="{20_000_000 + n}"
 type="audio/mpeg"/>
<itunes:duration>{20 + n % 40}:{n % 60:02d}</itunes:duration>
<itunes:episode>{n + 1}</itunes:episode></item>"""
        )
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<rss version="2.0" xmlns:itunes="http://www.itunes.com/dtds/podcast-1.0.dtd">
<channel><title>{title}</title><link>https://{host}.example/</link>
<description>A generated show for load tests.</description><language>en</language>
<itunes:author>Load Test</itunes:author><itunes:category text="Technology"/>
{"".join(items)}
</channel></rss>""".encode()


_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
