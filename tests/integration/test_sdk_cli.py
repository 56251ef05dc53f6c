"""The `podmesh` command run as a subprocess against the running platform: output and
exit codes (0 ok, 1 failure with the google.rpc.Status reason, 2 usage)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import stat
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

from devstack.stack import GEN_DIR, Stack
from services.shared.measurement_prefix import prefix_id
from tests.catalog.support import FeedServer
from tests.sdk_support import CDN_FIXTURES, current_fixture

PODMESH = Path(sys.executable).parent / "podmesh"


class Cli:
    def __init__(self, home: Path, gateway: str) -> None:
        self.env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith("PODMESH_") or key == "PODMESH_KEEP_RUN"
        }
        self.env |= {"XDG_CONFIG_HOME": str(home), "HOME": str(home), "PYTHONPATH": str(GEN_DIR)}
        self.gateway = gateway

    async def __call__(self, *args: str) -> subprocess.CompletedProcess[str]:
        return await asyncio.to_thread(
            subprocess.run,
            [str(PODMESH), *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
        )


async def test_cli_from_login_to_a_csv_of_metrics(
    stack: Stack, feeds: FeedServer, tmp_path: Path
) -> None:
    cli = Cli(tmp_path, stack.gateway_url)
    slug = f"cli-{uuid.uuid4().hex[:10]}"

    created = await cli(
        "--gateway", stack.gateway_url, "tenants", "create", slug,
        "--admin-token", stack.admin_token, "--output", "json",
    )  # fmt: skip
    assert created.returncode == 0, created.stderr
    key = json.loads(created.stdout)["apiKeySecret"]
    assert key.startswith("pk_")
    measurement_prefix = prefix_id(uuid.UUID(json.loads(created.stdout)["tenant"]["id"]))

    logged_in = await cli("login", "--gateway", stack.gateway_url, "--api-key", key)
    assert logged_in.returncode == 0, logged_in.stderr
    assert "Logged in" in logged_in.stdout
    profile = tmp_path / "podmesh" / "profiles.toml"
    assert stat.S_IMODE(profile.stat().st_mode) == 0o600
    assert key in profile.read_text()

    feed = feeds.serve(f"/{uuid.uuid4().hex}.xml", (CDN_FIXTURES / "feed.xml").read_bytes())
    imported = await cli("podcasts", "import-feed", feed)
    assert imported.returncode == 0, imported.stderr
    assert "episodes: 2 created" in imported.stdout
    podcast_id = imported.stdout.split()[1]

    logs = current_fixture("cloudfront", tmp_path)
    ingested = await cli("ingest", "logs", "--format", "cloudfront", str(logs), "--output", "json")
    assert ingested.returncode == 0, ingested.stderr
    report = json.loads(ingested.stdout)
    assert (report["accepted"], report["duplicates"], report["rejected"]) == (
        5, 0, {"UNKNOWN_EPISODE": 1},
    )  # fmt: skip
    assert report["malformed"] == {"4 fields, the header names 33": 1}
    assert report["malformed_examples"][0]["line"] == 7

    as_table = await cli("ingest", "logs", "--format", "cloudfront", str(logs))
    assert as_table.returncode == 0, as_table.stderr
    assert "duplicates (already imported)" in as_table.stdout
    assert "rejected: unknown_episode" in as_table.stdout

    start = (datetime.now(UTC) - timedelta(days=2)).date().isoformat()
    end = (datetime.now(UTC) + timedelta(days=1)).date().isoformat()
    csv_out = await cli(
        "metrics", "query", "--start", start, "--end", end, "--time-zone", "UTC",
        "--podcast", podcast_id, "--format", "csv",
    )  # fmt: skip
    assert csv_out.returncode == 0, csv_out.stderr
    rows = [line for line in csv_out.stdout.splitlines() if line and not line.startswith("#")]
    assert rows[0] == "bucket_start_time,downloads"
    assert "# guideline:" in csv_out.stdout
    # The one complete download of episode 1 (a full 200 by Apple Podcasts) is counted.
    assert sum(int(row.rsplit(",", 1)[1]) for row in rows[1:]) == 1

    as_json = await cli(
        "metrics", "query", "--start", start, "--end", end, "--time-zone", "UTC",
        "--podcast", podcast_id, "--format", "json",
    )  # fmt: skip
    assert as_json.returncode == 0, as_json.stderr
    points = json.loads(as_json.stdout)["points"]
    assert sum(int(point.get("downloads", 0)) for point in points) == 1
    as_table = await cli(
        "metrics", "query", "--start", start, "--end", end, "--time-zone", "UTC",
        "--podcast", podcast_id, "--breakdown", "app",
    )  # fmt: skip
    assert as_table.returncode == 0, as_table.stderr
    header = next(line for line in as_table.stdout.splitlines() if "bucket" in line)
    assert re.findall(r"\w+", header) == ["bucket", "value", "downloads"]

    watched = await cli("metrics", "watch", "--podcast", podcast_id, "--count", "1")
    assert watched.returncode == 0, watched.stderr
    assert "updateTime" in json.loads(watched.stdout.splitlines()[0])

    one = await cli("prefix", "url", podcast_id, "https://media.example.com/x.mp3?a=1")
    assert one.stdout.strip() == (
        f"{stack.gateway_url}/e/{measurement_prefix}/media.example.com/x.mp3?a=1"
    )
    prefixed = await cli("prefix", "url", podcast_id)
    assert prefixed.returncode == 0, prefixed.stderr
    assert f"{stack.gateway_url}/e/{measurement_prefix}/media.example.com/shows/acme/ep1.mp3" in (
        prefixed.stdout.splitlines()
    )


async def test_cli_errors_name_the_reason_and_exit_1_or_2(stack: Stack, tmp_path: Path) -> None:
    cli = Cli(tmp_path, stack.gateway_url)
    created = await cli(
        "--gateway", stack.gateway_url, "tenants", "create", f"cli-{uuid.uuid4().hex[:10]}",
        "--admin-token", stack.admin_token, "--output", "json",
    )  # fmt: skip
    key = json.loads(created.stdout)["apiKeySecret"]
    auth = ("--gateway", stack.gateway_url, "--api-key", key)

    refused = await cli(*auth, "podcasts", "import-feed", "ftp://example.com/feed.xml")
    assert refused.returncode == 1
    assert "INVALID_ARGUMENT" in refused.stderr
    assert "field feed_url" in refused.stderr
    assert "Traceback" not in refused.stderr

    bad_key = await cli("login", "--gateway", stack.gateway_url, "--api-key", "pk_nope")
    assert bad_key.returncode == 1
    assert "does not accept this key" in bad_key.stderr

    no_key = await cli("--gateway", stack.gateway_url, "metrics", "query")
    assert no_key.returncode == 1
    assert "podmesh login" in no_key.stderr

    usage = await cli(*auth, "metrics", "query", "--format", "xml")
    assert usage.returncode == 2
    assert "Invalid value for '--format'" in usage.stderr

    missing_field = tmp_path / "no-id.log"
    missing_field.write_text(
        (CDN_FIXTURES / "cloudfront.log").read_text().replace(" x-edge-request-id", "")
    )
    failed = await cli(*auth, "ingest", "logs", "--format", "cloudfront", str(missing_field))
    assert failed.returncode == 1
    assert "lacks x-edge-request-id" in failed.stderr
