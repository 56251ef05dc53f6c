"""The query path: reports of downloads, listeners and ad deliveries read from the
rollups and detail tables that ingestion writes, the report cache, and the funnel."""
