"""Live counters: today's counts kept in Redis as ingestion commits them, and the
watch that streams them to WatchMetrics callers."""
