"""Logging for a service nobody watches: one line per job run, plain text or JSON lines.

``NEWSLETTER_LOG_FORMAT=json`` writes one JSON object per line (time, level, logger, message and
any ``extra=`` fields), for journald, Loki or any log shipper; ``text`` (the default) is for people.
Configured once, at an entry point (the daemon, the web server); library code only calls
``logging.getLogger(__name__)``.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys

from newsletter.errors import redact

# Attributes every LogRecord has; anything else was passed with extra= and belongs in the JSON line.
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


class JsonLines(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        entry.update({k: v for k, v in vars(record).items() if k not in _STANDARD})
        if record.exc_info:
            entry["exception"] = redact(self.formatException(record.exc_info))
        return json.dumps(entry, default=str, ensure_ascii=False)


class Text(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


def configure(*, log_format: str = "text", level: str = "INFO") -> None:
    """Send the package's logs (and APScheduler's warnings) to stderr in the chosen format."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLines() if log_format == "json" else Text())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("apscheduler").setLevel(logging.WARNING)  # its own "Running job ..." lines duplicate ours
    logging.getLogger("aiosmtplib").setLevel(logging.WARNING)
