"""Cold tier: compaction of old events into Parquet, queried with DuckDB (not built yet)."""
