"""`make bench`: runs every benchmark, each in its own process, and ends with a summary.

Each benchmark prints its figures as `name: value` lines (and whatever else helps
to read them). The summary repeats the figures the issues name, in their order.
BENCH_SCALE (default 1.0) shrinks every benchmark's data for a quick run.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys

BENCHMARKS = (
    "tests.bench.counting",
    "tests.bench.counting_funnel",
    "tests.bench.catalog",
    "tests.bench.catalog_import_isolation",
    "tests.bench.analytics_ingest",
    "tests.bench.ingest_logs",
    "tests.bench.campaign",
    "tests.bench.analytics_queries",
    "tests.bench.strict_input",
    "tests.bench.strict_json",
    "tests.bench.prefix",
    "tests.bench.failover",
    "tests.bench.attribution_models",
    "tests.bench.attribution_lift",
    "tests.bench.attribution_report",
    "tests.bench.attribution_site_events",
)
SUMMARY = (
    "ingest_grpc_requests_per_s",
    "ingest_copy_rows_per_s",
    "ingest_vs_copy_ratio",
    "ingest_json_requests_per_s",
    "ingest_logs_lines_per_s",
    "ingest_logs_vs_grpc_ratio",
    "query_p50_ms",
    "query_p95_ms",
    "query_p99_ms",
    "campaign_pacing_p95_ms",
    "campaign_refused_pacing_p95_ms",
    "campaign_pacing_vs_refused_p95_ratio",
    "campaign_pacing_uncached_p95_ms",
    "campaign_pacing_uncached_vs_refused_p95_ratio",
    "campaign_booking_per_s",
    "campaign_refused_booking_per_s",
    "campaign_booking_vs_refused_ratio",
    "analytics_peak_rss_mb",
    "strict_json_on_vs_off_ratio",
    "strict_json_check_cpu_us_per_record",
    "import_slowdown_p50_ratio",
    "import_slowdown_p95_ratio",
    "prefix_redirects_per_s",
    "prefix_redirect_p99_ms",
    "prefix_vs_floor_throughput",
    "prefix_logged_ratio",
    "failover_seconds",
    "analytics_rss_mb_success",
    "analytics_rss_mb_failing",
    "attribution_models_total_cpu_s",
    "attribution_lift_households_stream_seconds",
    "attribution_lift_control_group_seconds",
    "attribution_report_seconds_cold",
    "attribution_report_seconds_warm",
    "attribution_report_rss_mb",
    "attribution_site_events_per_s",
    "attribution_site_events_copy_per_s",
    "attribution_site_events_vs_copy_ratio",
)
FIGURE = re.compile(r"^([a-z][a-z0-9_]*): (\S+)$")


def main() -> int:
    figures: dict[str, str] = {}
    failed: list[str] = []
    for module in BENCHMARKS:
        print(f"== {module}", flush=True)
        if importlib.util.find_spec(module) is None:
            print("not written yet")
            continue
        process = subprocess.Popen(
            [sys.executable, "-m", module], stdout=subprocess.PIPE, text=True
        )
        assert process.stdout is not None
        for line in process.stdout:
            print(line, end="", flush=True)
            match = FIGURE.match(line.strip())
            if match:
                figures[match.group(1)] = match.group(2)
        if process.wait() != 0:
            failed.append(module)
    print("\n== summary")
    for name in SUMMARY:
        print(f"{name}: {figures.get(name, 'n/a')}")
    for module in failed:
        print(f"failed: {module}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
