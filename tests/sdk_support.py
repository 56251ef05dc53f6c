"""CDN log fixtures made current: the files are dated 2026-11-30 as written; tests
import them as if logged yesterday, so they stay inside the raw-data retention."""

from __future__ import annotations

import gzip
from datetime import UTC, datetime, timedelta
from pathlib import Path

CDN_FIXTURES = Path(__file__).parent / "fixtures" / "cdn_logs"
FIXTURE_DAY = datetime(2026, 11, 30, tzinfo=UTC)
MEDIA_HOST = "media.example.com"
EPISODE_PATHS = ("/shows/acme/ep1.mp3", "/shows/acme/ep2.mp3")
# format -> (fixture, extra options for import)
FORMAT_FIXTURES = {
    "cloudfront": "cloudfront.log",
    "cloudflare": "cloudflare.ndjson",
    "fastly": "fastly.ndjson",
    "nginx": "nginx.log",
    "apache": "apache.log",
    "s3": "s3.log",
}


def dated(text: str, day: datetime) -> str:
    return text.replace(FIXTURE_DAY.strftime("%Y-%m-%d"), day.strftime("%Y-%m-%d")).replace(
        FIXTURE_DAY.strftime("%d/%b/%Y"), day.strftime("%d/%b/%Y")
    )


def current_fixture(format_name: str, directory: Path, *, gzipped: bool = False) -> Path:
    """The format's fixture, dated yesterday (UTC), written into `directory`."""
    name = FORMAT_FIXTURES[format_name]
    day = datetime.now(UTC) - timedelta(days=1)
    text = dated((CDN_FIXTURES / name).read_text(encoding="utf-8"), day)
    if gzipped or format_name == "cloudfront":
        target = directory / f"{name}.gz"
        target.write_bytes(gzip.compress(text.encode()))
    else:
        target = directory / name
        target.write_text(text, encoding="utf-8")
    return target
