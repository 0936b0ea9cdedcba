"""Ingest: sources → fetched bytes (fetch) → Paper records (feeds) → stored papers (run)."""
