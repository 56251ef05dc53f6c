"""The CDN log parsers, the profile file and the SDK's retry rule, without a platform."""

from __future__ import annotations

import gzip
import os
import stat
from pathlib import Path

import pytest

from podmesh_sdk.client import IDEMPOTENT
from podmesh_sdk.config import ConfigError, Credentials, ProfileStore
from podmesh_sdk.logs import ImportOptions, LogFormatError, ParseStats, read_records
from tests.sdk_support import CDN_FIXTURES, FORMAT_FIXTURES, current_fixture

S3_OPTIONS = ImportOptions(media_host="media.example.com")


def parse(
    path: Path, format_name: str, options: ImportOptions | None = None
) -> tuple[list, ParseStats]:  # type: ignore[type-arg]
    stats = ParseStats()
    records = list(read_records(path, format_name, options or ImportOptions(), stats))
    return records, stats


# (records, malformed, ignored) each fixture must give
EXPECTED = {
    "cloudfront": (6, 1, 0),
    "cloudflare": (5, 1, 0),
    "fastly": (4, 1, 0),
    "nginx": (4, 2, 0),
    "apache": (4, 1, 0),
    "s3": (3, 1, 1),
}


@pytest.mark.parametrize("format_name", sorted(FORMAT_FIXTURES))
def test_each_fixture_parses_with_its_bad_lines_counted(format_name: str) -> None:
    options = S3_OPTIONS if format_name == "s3" else None
    records, stats = parse(CDN_FIXTURES / FORMAT_FIXTURES[format_name], format_name, options)
    assert (len(records), sum(stats.malformed.values()), sum(stats.ignored.values())) == (
        EXPECTED[format_name]
    )
    assert stats.records == len(records)
    assert len({r.id for r in records}) == len(records)
    assert all(r.media_url.startswith("https://media.example.com/") for r in records)
    assert stats.examples
    assert all(line > 0 for _, line, _ in stats.examples)


def test_cloudfront_fields_as_counting_needs_them(tmp_path: Path) -> None:
    records, _ = parse(current_fixture("cloudfront", tmp_path), "cloudfront")
    full, probe, ranged = records[0], records[1], records[2]
    assert full.user_agent.startswith("AppleCoreMedia/1.0.0.21E236 (iPhone; U;")
    # sc-bytes counts headers; the body is capped at Content-Length.
    assert full.bytes_served == 28_850_000
    assert (probe.range, probe.bytes_served) == ("bytes=0-1", 2)
    assert (ranged.range, ranged.bytes_served, ranged.status_code) == (
        "bytes=0-1048575",
        1_048_576,
        206,
    )
    assert full.id == "cf:SOX4xwn4XV6Q4rgb7XiVGOHms_BGlTAC4KyHmureZmBNrjGdRLiNIQ=="


def test_offset_ids_are_the_same_for_a_copy_and_a_gzip_of_it(tmp_path: Path) -> None:
    plain, _ = parse(CDN_FIXTURES / "nginx.log", "nginx")
    copy = tmp_path / "renamed.log.gz"
    copy.write_bytes(gzip.compress((CDN_FIXTURES / "nginx.log").read_bytes()))
    zipped, _ = parse(copy, "nginx")
    assert [r.id for r in plain] == [r.id for r in zipped]
    assert plain[3].request_time.ToJsonString().endswith("T11:00:05Z")  # +0100 made UTC


def test_a_missing_cloudfront_field_names_it(tmp_path: Path) -> None:
    text = (CDN_FIXTURES / "cloudfront.log").read_text().replace(" x-edge-request-id", "")
    path = tmp_path / "no-id.log"
    path.write_text(text)
    with pytest.raises(LogFormatError, match="lacks x-edge-request-id"):
        parse(path, "cloudfront")


def test_a_missing_json_field_names_it(tmp_path: Path) -> None:
    path = tmp_path / "no-bytes.ndjson"
    path.write_text(
        (CDN_FIXTURES / "cloudflare.ndjson").read_text().replace('"EdgeResponseBodyBytes"', '"X"')
    )
    with pytest.raises(LogFormatError, match="field EdgeResponseBodyBytes is missing"):
        parse(path, "cloudflare")


def test_a_truncated_gzip_fails_after_yielding_what_it_read(tmp_path: Path) -> None:
    whole = gzip.compress((CDN_FIXTURES / "cloudfront.log").read_bytes() * 50)
    path = tmp_path / "cut.log.gz"
    path.write_bytes(whole[: len(whole) // 2])
    stats = ParseStats()
    seen: list[object] = []
    records = read_records(path, "cloudfront", ImportOptions(), stats)
    with pytest.raises(LogFormatError, match=r"cut\.log\.gz: the gzip stream is truncated"):
        seen.extend(records)
    assert seen
    assert stats.lines > 0


def test_profiles_are_written_0600_and_refused_when_readable(tmp_path: Path) -> None:
    store = ProfileStore(tmp_path / "podmesh" / "profiles.toml")
    store.save("work", Credentials("http://127.0.0.1:8080", 'pk_"quoted"'))
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600
    assert store.get("work") == Credentials("http://127.0.0.1:8080", 'pk_"quoted"')
    os.chmod(store.path, 0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        store.get("work")


def test_the_environment_wins_over_the_profile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = ProfileStore(tmp_path / "profiles.toml")
    store.save("default", Credentials("http://saved:8080", "pk_saved"))
    monkeypatch.setenv("PODMESH_API_KEY", "pk_env")
    monkeypatch.delenv("PODMESH_GATEWAY", raising=False)
    found = Credentials.load(store=store)
    assert (found.gateway, found.api_key, found.target) == (
        "http://saved:8080",
        "pk_env",
        "saved:8080",
    )


def test_only_get_mapped_methods_are_retried() -> None:
    assert "/podmesh.analytics.v1.AnalyticsService/QueryMetrics" in IDEMPOTENT
    assert "/podmesh.catalog.v1.CatalogService/ListPodcasts" in IDEMPOTENT
    assert "/podmesh.tenant.v1.TenantService/CreateTenant" not in IDEMPOTENT
    assert "/podmesh.analytics.v1.AnalyticsService/IngestListenerEvents" not in IDEMPOTENT
