"""PostgreSQL access shared by ingest and workers: migrations, named queries, the job ledger."""
