"""The `podmesh` command: profiles, tenants, feed import, CDN log import, metrics.

Exit codes: 0 success, 1 failure (the server refused, a file could not be read), 2
usage (bad options, from Click), 130 interrupted. Errors print the google.rpc.Status
code, reason and fields, never a traceback.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Coroutine
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click
import grpc
from google.protobuf import json_format
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from rich.console import Console
from rich.live import Live
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from podmesh_sdk._stubs import ensure_stubs

ensure_stubs()

from podmesh.analytics.v1 import analytics_pb2 as analytics  # noqa: E402
from podmesh.catalog.v1 import catalog_pb2 as catalog  # noqa: E402
from podmesh.tenant.v1 import tenant_pb2 as tenant  # noqa: E402

from podmesh_sdk.client import Client, RetryPolicy, pages  # noqa: E402
from podmesh_sdk.config import ConfigError, Credentials, ProfileStore, normalise_gateway  # noqa: E402
from podmesh_sdk.errors import PodmeshError  # noqa: E402
from podmesh_sdk.importer import DEFAULT_BATCH, ImportReport, import_logs  # noqa: E402
from podmesh_sdk.logs import FORMATS, ImportOptions  # noqa: E402

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)
T = TypeVar("T")


class Settings:
    def __init__(self, profile: str | None, gateway: str | None, api_key: str | None) -> None:
        self.profile, self.gateway, self.api_key = profile, gateway, api_key

    def credentials(self) -> Credentials:
        return Credentials.load(gateway=self.gateway, api_key=self.api_key, profile=self.profile)

    def client(self, api_key: str | None = None) -> Client:
        found = self.credentials()
        if api_key:
            found = Credentials(found.gateway, api_key)
        if not found.api_key:
            raise ConfigError(
                "no credential: run `podmesh login`, or set PODMESH_API_KEY (or pass --api-key)"
            )
        return Client(found, retry=RetryPolicy())


def _fail(message: str) -> NoReturn:
    err.print(f"[bold red]error:[/] {message}", markup=True)
    raise SystemExit(1)


def _run(coroutine: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coroutine)


def _json(message: Message) -> str:
    return json_format.MessageToJson(message, indent=2, preserving_proto_field_name=False)


def _enum_choices(enum: Any, prefix: str) -> dict[str, int]:
    return {
        name.removeprefix(prefix).lower().replace("_", "-"): number
        for name, number in enum.items()
        if not name.endswith("UNSPECIFIED")
    }


def _timestamp(value: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(value.astimezone(UTC))
    return stamp


def _parse_time(value: str, name: str) -> datetime:
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not an ISO date or time", param_hint=name) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--profile", help="Profile of ~/.config/podmesh/profiles.toml (or PODMESH_PROFILE).")
@click.option("--gateway", help="Gateway URL, e.g. http://127.0.0.1:8080 (or PODMESH_GATEWAY).")
@click.option("--api-key", help="API key or access token (or PODMESH_API_KEY).")
@click.version_option(package_name="podmesh")
@click.pass_context
def cli(ctx: click.Context, profile: str | None, gateway: str | None, api_key: str | None) -> None:
    """Podmesh from the command line."""
    ctx.obj = Settings(profile, gateway, api_key)


# --- login and profiles ------------------------------------------------------------------


@cli.command()
@click.option("--gateway", "gateway_option", required=True, help="Gateway URL.")
@click.option("--api-key", "key_option", help="The API key (asked for when not given).")
@click.option("--profile", "profile_option", default="default", show_default=True)
@click.pass_obj
def login(
    settings: Settings, gateway_option: str, key_option: str | None, profile_option: str
) -> None:
    """Check an API key against the gateway and save it as a profile (mode 0600)."""
    gateway = normalise_gateway(gateway_option)
    key = key_option or click.prompt("API key", hide_input=True)

    async def introspect() -> tenant.IntrospectCredentialResponse:
        async with Client(Credentials(gateway, "")) as client:
            return await client.tenant.IntrospectCredential(
                tenant.IntrospectCredentialRequest(credential=key)
            )

    answer = _run(introspect())
    if not answer.active:
        _fail("the gateway does not accept this key (unknown, revoked or expired)")
    store = ProfileStore()
    store.save(profile_option, Credentials(gateway, key))
    scopes = ", ".join(
        tenant.ApiKeyScope.Name(s).removeprefix("API_KEY_SCOPE_").lower()
        for s in answer.principal.scopes
    )
    out.print(
        f"Logged in to {gateway} as tenant {answer.principal.tenant_id or '(platform)'}"
        + (f" (scopes: {scopes})" if scopes else "")
        + f"; saved as profile {profile_option!r} in {store.path}"
    )


@cli.group()
def profiles() -> None:
    """Saved profiles."""


@profiles.command("list")
def profiles_list() -> None:
    """List saved profiles (keys are not shown)."""
    store = ProfileStore()
    table = Table("profile", "gateway", "api key")
    for name in store.names():
        saved = store.get(name)
        assert saved is not None
        table.add_row(name, saved.gateway, saved.api_key[:7] + "..." if saved.api_key else "")
    out.print(table)


# --- tenants -------------------------------------------------------------------------------


@cli.group()
def tenants() -> None:
    """Tenants (platform administrator)."""


@tenants.command("create")
@click.argument("slug")
@click.option("--display-name", help="Defaults to the slug.")
@click.option(
    "--admin-token",
    envvar="PODMESH_ADMIN_TOKEN",
    required=True,
    help="The platform administrator's token (or PODMESH_ADMIN_TOKEN).",
)
@click.option("--save-profile", help="Save the new owner key as this profile.")
@click.option("--output", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.pass_obj
def tenants_create(
    settings: Settings,
    slug: str,
    display_name: str | None,
    admin_token: str,
    save_profile: str | None,
    output: str,
) -> None:
    """Create a tenant; prints its first (owner) API key, shown this once."""

    async def create() -> tenant.CreateTenantResponse:
        async with settings.client(admin_token) as client:
            return await client.tenant.CreateTenant(
                tenant.CreateTenantRequest(
                    tenant=tenant.Tenant(slug=slug, display_name=display_name or slug)
                )
            )

    created = _run(create())
    if save_profile:
        ProfileStore().save(
            save_profile, Credentials(settings.credentials().gateway, created.api_key_secret)
        )
    if output == "json":
        out.print(_json(created))
        return
    out.print(f"tenant {created.tenant.id} ({created.tenant.slug})")
    out.print(f"owner API key (shown once): {created.api_key_secret}")


# --- podcasts -----------------------------------------------------------------------------


@cli.group()
def podcasts() -> None:
    """Podcasts in the catalog."""


@podcasts.command("import-feed")
@click.argument("url")
@click.option("--podcast-id", default="", help="Import into this podcast.")
@click.option("--validate-only", is_flag=True, help="Report what would change; write nothing.")
@click.option("--output", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.pass_obj
def podcasts_import_feed(
    settings: Settings, url: str, podcast_id: str, validate_only: bool, output: str
) -> None:
    """Import (or update) a podcast and its episodes from an RSS feed URL."""

    async def run() -> catalog.ImportFeedResponse:
        async with settings.client() as client:
            return await client.catalog.ImportFeed(
                catalog.ImportFeedRequest(
                    feed_url=url, podcast_id=podcast_id, validate_only=validate_only
                ),
                timeout=120,
            )

    answer = _run(run())
    if output == "json":
        out.print(_json(answer))
        return
    verb = "created" if answer.podcast_created else "updated"
    out.print(f"podcast {answer.podcast.id} {verb}: {answer.podcast.title}")
    out.print(
        f"episodes: {answer.created_episode_count} created, {answer.updated_episode_count} "
        f"updated, {answer.unchanged_episode_count} unchanged, "
        f"{answer.missing_episode_count} missing, {answer.skipped_item_count} skipped"
    )
    for warning in answer.warnings:
        err.print(f"warning: {warning.item or 'channel'}: {warning.message}")


# --- ingest --------------------------------------------------------------------------------


@cli.group()
def ingest() -> None:
    """Send listener requests."""


def _progress_text(report: ImportReport, started: float) -> str:
    rate = report.stats.lines / max(time.monotonic() - started, 1e-6)
    rejected = sum(report.totals.rejected_by_reason.values())
    text = (
        f"{report.stats.lines:,} lines  {rate:,.0f} lines/s  accepted {report.totals.accepted:,}"
        f"  duplicates {report.totals.duplicates:,}  rejected {rejected:,}"
    )
    if report.totals.rejected_by_reason:
        text += (
            " ("
            + ", ".join(
                f"{reason.lower()} {count:,}"
                for reason, count in report.totals.rejected_by_reason.most_common(3)
            )
            + ")"
        )
    malformed = sum(report.stats.malformed.values())
    if malformed:
        text += f"  malformed {malformed:,}"
    return text


def _print_report(report: ImportReport, elapsed: float) -> None:
    table = Table("", "count", title="import", title_justify="left")
    table.add_row("lines read", f"{report.stats.lines:,}")
    table.add_row("lines/s", f"{report.stats.lines / max(elapsed, 1e-6):,.0f}")
    table.add_row("records sent", f"{report.stats.records:,}")
    table.add_row("accepted", f"{report.totals.accepted:,}")
    table.add_row("duplicates (already imported)", f"{report.totals.duplicates:,}")
    for reason, count in sorted(report.totals.rejected_by_reason.items()):
        table.add_row(f"rejected: {reason.lower()}", f"{count:,}")
    for reason, count in sorted(report.stats.malformed.items()):
        table.add_row(f"malformed: {reason}", f"{count:,}")
    for reason, count in sorted(report.stats.ignored.items()):
        table.add_row(f"ignored: {reason}", f"{count:,}")
    for reason, count in sorted(report.totals.filtered_by_reason.items()):
        table.add_row(f"stored, not counted: {reason.lower()}", f"{count:,}")
    table.add_row("stored, late (counted by a rebuild)", f"{report.totals.late:,}")
    table.add_row("countable", f"{report.totals.countable:,}")
    out.print(table)
    for file, number, reason in report.stats.examples:
        err.print(f"malformed: {file}:{number}: {reason}")


@ingest.command("logs")
@click.option(
    "--format",
    "format_name",
    type=click.Choice(sorted(FORMATS)),
    required=True,
    help="The log format (see the README's 'Getting data in').",
)
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--media-host", default="", help="Use this host in every media URL.")
@click.option("--default-host", default="", help="Host for lines that do not log one.")
@click.option(
    "--batch-size", default=DEFAULT_BATCH, show_default=True, type=click.IntRange(1, 5000)
)
@click.option("--in-flight", default=4, show_default=True, type=click.IntRange(1, 8))
@click.option("--output", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.pass_obj
def ingest_logs(
    settings: Settings,
    format_name: str,
    files: tuple[Path, ...],
    media_host: str,
    default_host: str,
    batch_size: int,
    in_flight: int,
    output: str,
) -> None:
    """Import CDN access logs (plain or gzip). Safe to run again: nothing counts twice,
    so an interrupted import is resumed by running it again."""
    options = ImportOptions(media_host=media_host, default_host=default_host)
    started = time.monotonic()

    async def run() -> ImportReport:
        progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            TimeElapsedColumn(),
            console=err,
            transient=True,
        )
        async with settings.client() as client:
            ingestion = client.ingestion(in_flight=in_flight)
            report_holder: list[ImportReport] = []

            def on_progress(report: ImportReport) -> None:
                report_holder[:] = [report]

            with progress:
                task = progress.add_task("starting", total=None)
                importing = asyncio.ensure_future(
                    import_logs(
                        ingestion,
                        list(files),
                        format_name,
                        options,
                        batch_size=batch_size,
                        on_progress=on_progress,
                    )
                )
                while not importing.done():
                    await asyncio.wait([importing], timeout=0.25)
                    if report_holder:
                        progress.update(task, description=_progress_text(report_holder[0], started))
                return importing.result()

    report = _run(run())
    elapsed = time.monotonic() - started
    if output == "json":
        out.print(
            json.dumps(report.as_dict() | {"lines_per_s": report.stats.lines / max(elapsed, 1e-6)})
        )
    else:
        _print_report(report, elapsed)
    for message in report.file_errors:
        err.print(f"[bold red]error:[/] {message}", markup=True)
    if not report.ok:
        raise SystemExit(1)


# --- metrics -------------------------------------------------------------------------------

METRICS = _enum_choices(analytics.Metric, "METRIC_")
DIMENSIONS = _enum_choices(analytics.Dimension, "DIMENSION_")
GRANULARITIES = _enum_choices(analytics.Granularity, "GRANULARITY_")
SOURCES = _enum_choices(analytics.MeasurementSource, "MEASUREMENT_SOURCE_")


@cli.group()
def metrics() -> None:
    """Downloads, listeners and ads delivered."""


@metrics.command("query")
@click.option("--start", help="ISO date or time (UTC unless given); default 30 days ago.")
@click.option("--end", help="ISO date or time, exclusive; default now.")
@click.option("--podcast", "podcast_id", default="", help="Only this podcast.")
@click.option("--episode", "episode_ids", multiple=True, help="Only this episode (repeatable).")
@click.option("--metric", "metric_names", multiple=True, type=click.Choice(sorted(METRICS)))
@click.option("--breakdown", type=click.Choice(sorted(DIMENSIONS)))
@click.option("--granularity", type=click.Choice(sorted(GRANULARITIES)), default="day")
@click.option("--time-zone", default="", help="IANA zone; default the tenant's.")
@click.option(
    "--source",
    type=click.Choice(sorted(SOURCES)),
    default="bytes",
    show_default=True,
    help="byte-verified numbers, or the measurement prefix's (never added together).",
)
@click.option(
    "--format",
    "output",
    type=click.Choice(["table", "csv", "json"]),
    default="table",
    show_default=True,
)
@click.pass_obj
def metrics_query(
    settings: Settings,
    start: str | None,
    end: str | None,
    podcast_id: str,
    episode_ids: tuple[str, ...],
    metric_names: tuple[str, ...],
    breakdown: str | None,
    granularity: str,
    time_zone: str,
    source: str,
    output: str,
) -> None:
    """Query metrics as a table, CSV (with the methodology as # lines) or JSON."""
    end_at = _parse_time(end, "--end") if end else datetime.now(UTC)
    start_at = _parse_time(start, "--start") if start else end_at - timedelta(days=30)
    fields: dict[str, Any] = {
        "podcast_id": podcast_id,
        "episode_ids": list(episode_ids),
        "start_time": _timestamp(start_at),
        "end_time": _timestamp(end_at),
        "granularity": GRANULARITIES[granularity],
        "time_zone": time_zone,
        "metrics": [METRICS[m] for m in metric_names],
        "breakdown": DIMENSIONS[breakdown] if breakdown else 0,
        "source": SOURCES[source],
    }

    async def run() -> analytics.QueryMetricsResponse | analytics.ExportMetricsResponse:
        async with settings.client() as client:
            if output == "csv":
                return await client.analytics.ExportMetrics(
                    analytics.ExportMetricsRequest(**fields)
                )
            return await client.analytics.QueryMetrics(analytics.QueryMetricsRequest(**fields))

    answer = _run(run())
    if isinstance(answer, analytics.ExportMetricsResponse):
        sys.stdout.write(answer.body.data.decode("utf-8"))
        return
    if output == "json":
        out.print(_json(answer))
        return
    names = [
        m.removeprefix("METRIC_").lower()
        for m in map(analytics.Metric.Name, fields["metrics"] or [analytics.METRIC_DOWNLOADS])
    ]
    # The methodology is disclosed with every answer, the table's included.
    table = Table(
        "bucket", *(["value"] if breakdown else []), *names, caption=answer.methodology.guideline
    )
    for point in answer.points:
        row = [point.bucket_start_time.ToDatetime(UTC).isoformat()]
        if breakdown:
            row.append(point.dimension_value)
        row += [f"{getattr(point, name):,}" if point.HasField(name) else "" for name in names]
        table.add_row(*row)
    out.print(table)


@metrics.command("watch")
@click.option("--podcast", "podcast_id", default="")
@click.option("--episode", "episode_id", default="")
@click.option("--count", type=click.IntRange(1), help="Stop after this many updates.")
@click.pass_obj
def metrics_watch(settings: Settings, podcast_id: str, episode_id: str, count: int | None) -> None:
    """Live counters for today, as they change (Ctrl-C stops)."""

    def render(counters: analytics.LiveCounters) -> Table:
        table = Table("today", "value", title="live" + (" (degraded)" if counters.degraded else ""))
        table.add_row("downloads", f"{counters.downloads_today:,}")
        table.add_row("listeners", f"{counters.listeners_today:,}")
        table.add_row("ads delivered", f"{counters.ads_delivered_today:,}")
        table.add_row("requests, last minute", f"{counters.requests_last_minute:,}")
        table.add_row("updated", counters.update_time.ToDatetime(UTC).isoformat())
        return table

    async def run() -> None:
        async with settings.client() as client:
            call = client.analytics.WatchMetrics(
                analytics.WatchMetricsRequest(podcast_id=podcast_id, episode_id=episode_id)
            )
            seen = 0
            live = Live(console=out, auto_refresh=False) if out.is_terminal else None
            if live is not None:
                live.start()
            try:
                async for message in call:
                    seen += 1
                    if live is not None:
                        live.update(render(message.counters), refresh=True)
                    else:
                        out.print(json_format.MessageToJson(message.counters, indent=None))
                    if count is not None and seen >= count:
                        call.cancel()
                        return
            finally:
                if live is not None:
                    live.stop()

    _run(run())


# --- prefix --------------------------------------------------------------------------------


@cli.group()
def prefix() -> None:
    """The measurement prefix for enclosure URLs."""


@prefix.command("url")
@click.argument("podcast_id")
@click.argument("enclosure", required=False)
@click.option(
    "--public-url", help="The gateway's address as listeners reach it; default the profile's."
)
@click.pass_obj
def prefix_url(
    settings: Settings, podcast_id: str, enclosure: str | None, public_url: str | None
) -> None:
    """Print the prefixed enclosure URL to put in a feed:
    <gateway>/e/<the podcast's measurement prefix>/<enclosure URL without https://>.

    Without ENCLOSURE, prints the prefixed URL of every episode of the podcast."""
    base = normalise_gateway(public_url or settings.credentials().gateway)

    def prefixed(measurement_prefix: str, url: str) -> str:
        # The gateway redirects to https:// unless the path names another scheme.
        target = url[len("https://") :] if url.lower().startswith("https://") else url
        return f"{base}/e/{measurement_prefix}/{target}"

    async def run() -> tuple[str, list[str]]:
        async with settings.client() as client:
            found = await client.catalog.GetPodcast(
                catalog.GetPodcastRequest(podcast_id=podcast_id)
            )
            if enclosure:
                return found.podcast.measurement_prefix, [enclosure]
            return found.podcast.measurement_prefix, [
                episode.media_url
                async for episode in pages(
                    client.catalog.ListEpisodes,
                    catalog.ListEpisodesRequest(podcast_id=podcast_id, page_size=200),
                    lambda response: response.episodes,
                )
                if episode.media_url
            ]

    measurement_prefix, urls = _run(run())
    for url in urls:
        out.print(prefixed(measurement_prefix, url))


def main() -> None:
    """The console script: errors as messages and exit codes, never tracebacks."""
    try:
        code = cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        err.print("aborted")
        raise SystemExit(130) from None
    except click.ClickException as error:
        error.show()
        raise SystemExit(error.exit_code) from None
    except grpc.RpcError as error:
        _fail(str(PodmeshError.from_rpc(error)))
    except ConfigError as error:
        _fail(str(error))
    except KeyboardInterrupt:
        err.print("interrupted")
        raise SystemExit(130) from None
    raise SystemExit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
