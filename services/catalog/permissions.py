"""What each catalog RPC requires of its caller."""

from __future__ import annotations

from services.shared.auth import Access, MethodRule, Permission

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
