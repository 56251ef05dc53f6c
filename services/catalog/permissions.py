"""What each catalog RPC requires of its caller, and of its requests."""

from __future__ import annotations

from services.catalog.config import CatalogSettings
from services.shared.auth import Access, MethodRule, Permission
from services.shared.config import Settings
from services.shared.inputs import MIB, InputRule, InputRules

SERVICE = "podmesh.catalog.v1.CatalogService"

_BY_METHOD: dict[str, MethodRule] = {
    "CreatePodcast": Permission.CATALOG_WRITE,
    "GetPodcast": Permission.CATALOG_READ,
    "ListPodcasts": Permission.CATALOG_READ,
    "UpdatePodcast": Permission.CATALOG_WRITE,
    "DeletePodcast": Permission.CATALOG_WRITE,
    "CreateEpisode": Permission.CATALOG_WRITE,
    "GetEpisode": Permission.CATALOG_READ,
    "BatchGetEpisodes": Permission.CATALOG_READ,
    "ListEpisodes": Permission.CATALOG_READ,
    "UpdateEpisode": Permission.CATALOG_WRITE,
    "DeleteEpisode": Permission.CATALOG_WRITE,
    # Analytics resolves listener requests with the credentials of whoever sends
    # them, usually an ingest-only key; every credential of a tenant may look up
    # its own episodes' media facts.
    "ResolveEpisode": Access.AUTHENTICATED,
    "BatchResolveEpisodes": Access.AUTHENTICATED,
    "ImportFeed": Permission.CATALOG_WRITE,
    "SearchPodcasts": Permission.CATALOG_READ,
    "SearchEpisodes": Permission.CATALOG_READ,
}
RULES = {f"/{SERVICE}/{method}": rule for method, rule in _BY_METHOD.items()}

# Text limits are in characters, so these allow four bytes for each.
_INPUTS_BY_METHOD: dict[str, InputRule] = {
    # Descriptions of 100,000 characters.
    "CreatePodcast": InputRule(max_bytes=MIB),
    "UpdatePodcast": InputRule(max_bytes=MIB),
    # Transcripts of 500,000 characters and descriptions of 100,000.
    "CreateEpisode": InputRule(max_bytes=3 * MIB),
    "UpdateEpisode": InputRule(max_bytes=3 * MIB),
    # 500 media URLs of 2,048 characters.
    "BatchResolveEpisodes": InputRule(max_bytes=5 * MIB),
}


def inputs(settings: Settings) -> InputRules:
    assert isinstance(settings, CatalogSettings)
    by_method = {
        **_INPUTS_BY_METHOD,
        # The import refuses documents over the limit itself (FEED_TOO_LARGE); the
        # margin keeps that answer for documents just over.
        "ImportFeed": InputRule(max_bytes=settings.feed_max_bytes + MIB),
    }
    return {f"/{SERVICE}/{method}": rule for method, rule in by_method.items()}
