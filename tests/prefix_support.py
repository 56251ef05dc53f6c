"""A media host for the measurement prefix's tests and benchmark: HTTPS on loopback
(the prefix redirects to https://), with a certificate made for the session."""

from __future__ import annotations

import datetime as dt
import ipaddress
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Self

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from podmesh.catalog.v1 import catalog_pb2, catalog_pb2_grpc

from tests.support import TenantHandle, bearer

MEDIA = bytes(range(256)) * 64


def self_signed(directory: Path) -> tuple[Path, Path]:
    """(certificate, key) PEM files for 127.0.0.1, valid for a day."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "media-cert.pem", directory / "media-key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


class MediaServer:
    """Serves MEDIA at every path over HTTPS, in a thread."""

    def __init__(self, directory: Path) -> None:
        self.cert, key = self_signed(directory)

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "audio/mpeg")
                self.send_header("Content-Length", str(len(MEDIA)))
                self.end_headers()
                self.wfile.write(MEDIA)

            def log_message(self, format: str, *args: object) -> None:
                return None

        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.cert, key)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def authority(self) -> str:
        return f"127.0.0.1:{self._server.server_address[1]}"

    def client_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.cert))

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


async def episode_at(
    catalog: catalog_pb2_grpc.CatalogServiceAsyncStub, tenant: TenantHandle, media_url: str
) -> tuple[str, str]:
    """(podcast id, episode id) of a new episode with this media URL."""
    key = bearer(tenant.owner_key)
    podcast = await catalog.CreatePodcast(
        catalog_pb2.CreatePodcastRequest(podcast=catalog_pb2.Podcast(title="Prefixed")),
        metadata=key,
    )
    created = await catalog.CreateEpisode(
        catalog_pb2.CreateEpisodeRequest(
            podcast_id=podcast.podcast.id,
            episode=catalog_pb2.Episode(title="Episode 1", media_url=media_url),
        ),
        metadata=key,
    )
    return podcast.podcast.id, created.episode.id
