"""The Podmesh Python SDK: typed clients over the generated stubs, the resending
ingestion client, CDN log import, and the `podmesh` command.

Its package is `podmesh_sdk`, not `podmesh`: the generated stubs own the top-level
`podmesh` package (`podmesh.analytics.v1`, ...), and a second distribution of the same
name would shadow them.
"""

from podmesh_sdk._stubs import ensure_stubs

ensure_stubs()

from podmesh_sdk.client import Client, RetryPolicy, SyncClient, pages, sync_pages  # noqa: E402
from podmesh_sdk.config import Credentials, ProfileStore  # noqa: E402
from podmesh_sdk.errors import PodmeshError  # noqa: E402
from podmesh_sdk.ingest import IngestClient, IngestTotals  # noqa: E402

__all__ = [
    "Client",
    "Credentials",
    "IngestClient",
    "IngestTotals",
    "PodmeshError",
    "ProfileStore",
    "RetryPolicy",
    "SyncClient",
    "pages",
    "sync_pages",
]
