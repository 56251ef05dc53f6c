"""The ingestion path: listener events streamed in, checked, resolved to the catalog's
episodes, counted by the counting package and committed with their rollups; and
RebuildCounts, which runs the same counting again over stored raw requests."""
