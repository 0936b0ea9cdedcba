"""Typed settings, read once at an entry point (CLI, daemon, web app) and passed down.

Every field is read from ``NEWSLETTER_<NAME>`` in the environment or in ``.env``; ``.env.example``
lists them all. Nothing in the package reads the environment anywhere else.
"""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict, SettingsError

from newsletter.errors import ConfigError, redact

ENV_PREFIX = "NEWSLETTER_"
MIN_SECRET_KEY_CHARS = 32


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_file=".env", env_file_encoding="utf-8", extra="ignore",
        allow_inf_nan=False,  # NEWSLETTER_TRENDING_WEIGHT=inf made every paper's score inf, and every day quiet
    )

    database_url: str = "sqlite:///newsletter.db"
    # inline: each process that plans also sends (the embedded default); procrastinate (PostgreSQL only,
    # pip install '.[scale]'): planning enqueues send batches in its transaction and `newsletter worker`s send them.
    dispatch: Literal["inline", "procrastinate"] = "inline"

    email_backend: Literal["smtp", "file", "console"] = "file"
    outbox_dir: Path = Path("outbox")
    smtp_host: str | None = None
    smtp_port: int = Field(default=587, ge=1, le=65535)
    smtp_username: str | None = None
    smtp_password: str | None = None
    smtp_security: Literal["starttls", "tls", "none"] = "starttls"
    # AUTH over an unencrypted connection sends the password in clear: refused unless this is set.
    smtp_allow_plaintext_auth: bool = False
    smtp_timeout_s: float = Field(default=60.0, gt=0, le=3600)  # relays may take a minute to answer the final dot
    smtp_ca_file: Path | None = None  # CA bundle for a relay whose certificate the system does not trust
    smtp_pool_size: int = Field(default=4, ge=1, le=64)  # connections to the relay, each reused for many messages
    smtp_rate_per_s: float = Field(default=0.0, ge=0)  # messages per second to the relay; 0: no limit
    retry_base_s: float = Field(default=300.0, ge=0, le=86_400)  # first retry after a 4xx; doubles each time (±25%)
    retry_window_h: float = Field(default=24.0, gt=0, le=24 * 30)  # a delivery still failing after this long expires
    bounce_limit: int = Field(default=3, ge=1)  # permanent failures before an address is suppressed
    # A sender's claim on a batch of deliveries; renewed while it sends, taken over by another once it lapses.
    lease_s: float = Field(default=300.0, ge=5, le=86_400)
    # A digest run with at least this many digests to send (subscribers due, deliveries left by an earlier run)
    # claims and renders in a second process, ahead of the sending, so the two use two cores (newsletter.render_ahead); 0: always.
    render_ahead_from: int = Field(default=1000, ge=0)
    dkim_private_key_path: Path | None = None  # PEM; signing is on when this is set
    dkim_selector: str = "digest"
    dkim_domain: str | None = None  # default: the From address's domain
    # Dev switch: every message goes to this one address instead of the subscriber's.
    redirect_all_to: str | None = None

    from_address: str | None = None
    list_name: str = "Paper digest"
    base_url: str = "http://localhost:8000"
    secret_key: str | None = None

    # Ingest
    sources: list[str] = Field(default_factory=list)  # extra sources besides those in the database
    fetch_timeout_s: float = Field(default=30.0, gt=0, le=3600)
    max_feed_bytes: int = Field(default=20_000_000, gt=0, le=2_000_000_000)  # 20 MB: arXiv's largest listings are ~5 MB
    contact_email: str | None = None  # put in the User-Agent, as arXiv's terms ask
    fetch_retries: int = Field(default=3, ge=0, le=10)  # on 429 and 5xx
    host_interval_s: float = Field(default=1.0, ge=0, le=3600)  # between two requests to one host
    allow_private_sources: bool = False  # admin: allow feeds on private / loopback addresses
    max_retry_after_s: float = Field(default=60.0, ge=0, le=86_400)  # a longer Retry-After fails the fetch for this run
    hf_daily_url: str = "https://huggingface.co/api/daily_papers"  # the trending-papers API
    arxiv_api_url: str = "https://export.arxiv.org/api/query"  # for seed papers not yet ingested

    # Digest
    candidate_window_days: int = Field(default=3, ge=1, le=31)  # spans a weekend without arXiv listings
    default_max_papers: int = Field(default=10, ge=1, le=100)
    min_score: float = Field(default=1.5, ge=0, le=1000)  # BM25 units; below it a paper is noise
    send_empty_digest: bool = False  # quiet days: no email unless this is set
    trending_count: int = Field(default=5, ge=0, le=20)  # papers in the "trending today" section
    trending_weight: float = Field(default=0.1, ge=0, le=100)  # score per log(1 + upvotes) among relevant papers
    recency_penalty_per_day: float = Field(default=0.2, ge=0, le=100)  # score lost per day since a paper was first seen
    feedback_link_days: int = Field(default=60, ge=1, le=3650)  # "more / less like this" links expire after this
    semantic: bool = True  # fuse the MiniLM sentence-embedding ranker in (on whenever its model is installed)

    # The daemon (newsletter daemon)
    tick_s: float = Field(default=60.0, gt=0, le=86_400)  # how often it plans and sends what is due; 60: to the minute
    retry_drain_s: float = Field(default=300.0, gt=0, le=86_400)  # how often it sends retries whose time has come
    # Ingest of the configured sources: cron fields (minute hour day month day_of_week) in INGEST_TIMEZONE.
    # Default: shortly after arXiv's announcement, 20:00 New York time, Sunday to Thursday.
    ingest_cron: str = "5 20 * * sun-thu"
    ingest_timezone: str = "America/New_York"
    trending_cron: str = "15 * * * *"  # the trending sources (hf-daily): every hour
    cleanup_cron: str = "30 3 * * *"  # expire stale deliveries, forget old heartbeats (UTC)
    log_format: Literal["text", "json"] = "text"
    log_level: str = "INFO"

    # Subscribing (newsletter serve, newsletter inbound)
    confirm_link_hours: float = Field(default=72.0, gt=0, le=24 * 365)  # a confirmation link works this long, and once
    confirmations_per_address_per_day: int = Field(default=3, ge=1)  # confirmation emails to one address in 24 h
    subscribe_per_ip_per_hour: int = Field(default=20, ge=1)  # sign-up forms accepted from one IP address per hour
    # Behind a reverse proxy that sets X-Forwarded-For: its address, so rate limits see the visitor's.
    trusted_proxy: str | None = None
    inbound_host: str = "127.0.0.1"  # newsletter inbound: the SMTP listener for email commands
    inbound_port: int = Field(default=8025, ge=1, le=65535)
    # The address email commands are sent to (and the List-Unsubscribe mailto:); default: FROM_ADDRESS.
    commands_address: str | None = None

    @field_validator("smtp_ca_file", "dkim_private_key_path", "smtp_host", "from_address", "secret_key", "commands_address",
                     "trusted_proxy", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        """``NAME=`` in .env means "not set", not the current directory or an empty host."""
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("list_name", "smtp_host", "smtp_username", "dkim_selector", "dkim_domain", "contact_email",
                     "redirect_all_to", "trusted_proxy", "inbound_host")
    @classmethod
    def _one_line(cls, value: str | None) -> str | None:
        # These go into headers (Subject, From, List-Id, the User-Agent) or connections: a line break there
        # would start a header of its own, and the notices' library refuses it at every send.
        # Control characters only: a zero-width joiner belongs in an emoji, a ZWNJ in a Persian name.
        if value is not None and any(unicodedata.category(c) == "Cc" or c in "\u2028\u2029" for c in value):
            raise ValueError(f"{value!r} contains a line break or a control character; write it on one line")
        return value

    @field_validator("database_url")
    @classmethod
    def _known_database(cls, value: str) -> str:
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError

        example = "e.g. sqlite:///newsletter.db or postgresql://user:password@host/dbname"
        if value.startswith("postgres://"):
            value = "postgresql://" + value.removeprefix("postgres://")
        try:
            url = make_url(value)
        except ArgumentError:
            raise ValueError(f"{redact(value)!r} is not a database URL ({example})") from None
        except ValueError:  # a port that is not a number
            raise ValueError(f"{redact(value)!r} has an invalid port ({example})") from None
        if url.get_backend_name() not in ("sqlite", "postgresql"):
            raise ValueError(f"must start with sqlite:// or postgresql:// ({example})")
        if url.drivername == "postgresql":
            # psycopg 3 is the driver we ship; say so once here instead of at every connect.
            value = "postgresql+psycopg://" + value.split("://", 1)[1]
        return value

    @field_validator("base_url")
    @classmethod
    def _web_address(cls, value: str) -> str:
        # Every link in every email is built on it: javascript: or ftp: there is a broken (or hostile) link.
        parts = urlsplit(value.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{value!r} is not an http(s) address (e.g. https://digest.example.org)")
        return value.strip()

    @field_validator("log_level", mode="before")
    @classmethod
    def _log_level(cls, value: object) -> object:
        names = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
        if not isinstance(value, str) or value.strip().upper() not in names:
            raise ValueError(f"{value!r} is not a log level (one of {', '.join(names)})")
        return value.strip().upper()

    @field_validator("dispatch")
    @classmethod
    def _dispatch_needs_postgres(cls, value: str, info: ValidationInfo) -> str:
        if value == "procrastinate" and not str(info.data.get("database_url", "")).startswith("postgresql"):
            raise ValueError("procrastinate needs PostgreSQL (NEWSLETTER_DATABASE_URL=postgresql://…); on SQLite use inline")
        return value

    @field_validator("from_address", "commands_address")
    @classmethod
    def _valid_from_address(cls, value: str | None) -> str | None:
        if value is None:
            return None
        from email_validator import EmailNotValidError, validate_email

        try:
            validate_email(value, check_deliverability=False, allow_smtputf8=False)
        except EmailNotValidError as exc:
            raise ValueError(f"{value!r} is not an email address ({exc})") from None
        return value

    @field_validator("redirect_all_to")
    @classmethod
    def _one_address(cls, value: str | None) -> str | None:
        """One address: "bad" went out as ``To: bad``, and "me@x, other@y" as two recipients."""
        if value is None:
            return None
        from email_validator import EmailNotValidError, validate_email

        try:
            validate_email(value.strip(), check_deliverability=False, allow_smtputf8=True)
        except EmailNotValidError as exc:
            raise ValueError(f"{value!r} is not one email address ({exc})") from None
        return value.strip()

    @field_validator("secret_key")
    @classmethod
    def _long_secret(cls, value: str | None) -> str | None:
        # Links in emails are signed with it; a short key can be guessed offline from one link.
        if value is not None and len(value) < MIN_SECRET_KEY_CHARS:
            raise ValueError(f"must be at least {MIN_SECRET_KEY_CHARS} characters{SETTING_HINTS['secret_key']}")
        return value

    def require(self, *names: str, purpose: str) -> None:
        """Raise a ConfigError naming the first of ``names`` that is unset."""
        for name in names:
            if getattr(self, name) in (None, ""):
                hint = SETTING_HINTS.get(name, "")
                raise ConfigError(
                    f"{ENV_PREFIX}{name.upper()} is not set; {purpose} needs it. "
                    f"Set it in the environment or in .env{hint}"
                )

    @property
    def list_address(self) -> str:
        """Where email commands go: ``commands_address``, else the From address."""
        return self.commands_address or self.from_address or ""

    @property
    def from_domain(self) -> str:
        return (self.from_address or "localhost").rpartition("@")[2] or "localhost"


SETTING_HINTS = {
    "secret_key": " (make one with: python -c 'import secrets; print(secrets.token_urlsafe(32))')",
    "from_address": " (e.g. digest@example.org)",
    "smtp_host": " (the host name of your SMTP relay)",
}


def load_settings(**overrides: object) -> Settings:
    """Read the settings from the environment and .env, turning validation errors into one line."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except SettingsError as exc:  # a list setting that is not JSON: pydantic-settings fails before validating
        field = re.search(r'field "(\w+)"', str(exc))
        name = ENV_PREFIX + field.group(1).upper() if field else "a setting"
        raise ConfigError(f'{name} is invalid: not JSON ({exc.__cause__ or exc}); write a JSON list, e.g. '
                          f'["arxiv:cs.LG", "hf-daily"]. Fix it in the environment or in .env') from None
    except ValidationError as exc:
        first = exc.errors()[0]
        name = ENV_PREFIX + str(first["loc"][0]).upper() if first["loc"] else "settings"
        message = str(first["msg"]).removeprefix("Value error, ")
        raise ConfigError(f"{name} is invalid: {message}. Fix it in the environment or in .env") from None
