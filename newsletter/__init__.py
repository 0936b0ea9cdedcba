"""A self-hosted research-paper digest: ingest → score → render → send (see ``newsletter.pipeline``)."""

__version__ = "0.1.0"
