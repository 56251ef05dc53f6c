"""CDN log import: files parsed as streams, sent in batches through IngestClient.

Resuming is resending. An interrupted import is run again from the start: every
record id comes from the log line itself, so what the server already stored comes
back as duplicates and is counted once. We chose this over a local file of acknowledged
offsets: the server's idempotency is exact even when the import ran on another machine,
a file was renamed or recompressed, or the state file was lost, and re-reading a
file is cheap next to ingesting it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from podmesh.analytics.v1 import analytics_pb2 as pb

from podmesh_sdk.ingest import IngestClient, IngestTotals
from podmesh_sdk.logs import (
    ImportOptions,
    LogFormatError,
    ParseStats,
    batched,
    read_records,
)

DEFAULT_BATCH = 5000


@dataclass
class ImportReport:
    stats: ParseStats = field(default_factory=ParseStats)
    totals: IngestTotals = field(default_factory=IngestTotals)
    # One message per file that could not be read to its end.
    file_errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.file_errors

    def as_dict(self) -> dict[str, object]:
        return {
            "lines": self.stats.lines,
            "records": self.stats.records,
            "malformed": dict(self.stats.malformed),
            "malformed_examples": [
                {"file": f, "line": n, "reason": r} for f, n, r in self.stats.examples
            ],
            "ignored": dict(self.stats.ignored),
            "accepted": self.totals.accepted,
            "duplicates": self.totals.duplicates,
            "rejected": dict(self.totals.rejected_by_reason),
            "filtered": dict(self.totals.filtered_by_reason),
            "late": self.totals.late,
            "countable": self.totals.countable,
            "reconnects": self.totals.reconnects,
            "file_errors": self.file_errors,
        }


def _records(
    paths: Sequence[Path], format_name: str, options: ImportOptions, report: ImportReport
) -> Iterator[pb.ListenerRequest]:
    for path in paths:
        try:
            yield from read_records(path, format_name, options, report.stats)
        except LogFormatError as error:
            # What was read before the damage is sent; the file is reported, and the
            # other files are still imported.
            report.file_errors.append(str(error))
        except OSError as error:
            report.file_errors.append(f"{path}: {error.strerror or error}")


async def import_logs(
    ingestion: IngestClient,
    paths: Sequence[Path],
    format_name: str,
    options: ImportOptions | None = None,
    *,
    batch_size: int = DEFAULT_BATCH,
    on_progress: Callable[[ImportReport], None] | None = None,
) -> ImportReport:
    """Imports the files; the report has the parse counts and the server's answers."""
    report = ImportReport()

    def acknowledged(totals: IngestTotals, batch: Sequence[pb.ListenerRequest]) -> None:
        report.totals = totals
        if on_progress is not None:
            on_progress(report)

    ingestion.on_ack = acknowledged
    records = _records(paths, format_name, options or ImportOptions(), report)
    report.totals = await ingestion.send(batched(records, batch_size))
    return report
