"""The cold tier: events older than the warm window, compacted from the log into
Hive-partitioned Parquet with a manifest (``job``, ``manifest``, ``tables``, ``compact``), read
with DuckDB by history, analysts and replay (``reader``, ``replay_source``).

Rules: write to staging, rename into place, read back and verify, record in the manifest, and
only then count the source as archived; deleting the source is a separate step. Readers list
files from the manifest only. ``docs/archive.md`` is the analyst's guide.
"""
