"""The ``newsletter`` command. Settings are loaded once here and passed down; errors become one line.

Every command has ``--help``; commands whose output is data take ``--json``.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import itertools
import os
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from newsletter import subscriptions, validate
from newsletter.db import migrate, repo
from newsletter.db.engine import make_engine, make_sessionmaker, sqlite_file
from newsletter.db.models import SUBSCRIBER_STATUSES, Subscriber, utcnow
from newsletter.errors import FeedError, InvalidInput, NewsletterError, NotFound, database_error, redact
from newsletter.records import NewSubscriber, Preferences
from newsletter.settings import Settings, load_settings
from newsletter.wording import inert, plural, shorten

app = typer.Typer(help="A self-hosted research-paper digest: ingest → score → render → send.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
sources_app = typer.Typer(help="Manage the feeds papers come from.", no_args_is_help=True)
subscribers_app = typer.Typer(help="Manage subscribers (the admin path: added subscribers are active at once).",
                              no_args_is_help=True)
# `--help` groups the commands by when a user needs them: setting up first, then the daily work, then the
# long-running services (in the order Typer registered them, sources and subscribers came last).
START, DAILY, SERVICES = "Set up", "Daily work", "Services (long-running)"
app.add_typer(sources_app, name="sources", rich_help_panel=START)
app.add_typer(subscribers_app, name="subscribers", rich_help_panel=START)

# Text from outside (paper titles, feed names, addresses) is printed as it is: no Rich markup, no
# emoji codes, no highlighting, so "[/]" in a title can neither crash a command nor style it.
# Our own styling goes through Text objects.
# Tables fit the terminal; into a pipe or a log (cron) they get 160 columns, not Rich's 80, which cut
# paths, addresses and errors.
PIPE_WIDTH = 160
out = Console(soft_wrap=True, markup=False, highlight=False, emoji=False, width=None if sys.stdout.isatty() else PIPE_WIDTH)
err = Console(stderr=True, soft_wrap=True, markup=False, highlight=False, emoji=False)  # an error stays on one line

JsonOption = Annotated[bool, typer.Option("--json", help="Print the result as JSON.")]
VerboseOption = Annotated[bool, typer.Option("--verbose", "-v", help="Also print the per-subscriber detail.")]
YesOption = Annotated[bool, typer.Option("--yes", "-y", help="Do it without asking (needed when input is not a terminal).")]
LIST_TABLE_ROWS = 200  # beyond this a table is not read by a person: a summary, and --json for the data

# What to run next, added here to the errors of the layers below: those name no command, as the web
# front and the email commands show them too.
SUBSCRIBERS_HINT = "'newsletter subscribers list' shows who there is"
SOURCES_HINT = "'newsletter sources list' shows the configured ones"
PAPER_HINT = "ingest it first (--seed ID on 'newsletter subscribers add' or 'update' fetches it from arXiv)"


@contextlib.contextmanager
def hint(text: str, *, about: str, on: type[NewsletterError] = NotFound) -> Iterator[None]:
    """Append "; ``text``" to an ``on`` error raised inside whose message starts with ``about``."""
    try:
        yield
    except on as exc:
        if str(exc).startswith(about):
            exc.args = (f"{exc}; {text}",)
        raise


def confirm(question: str, *, yes: bool, refused: str) -> None:
    """Go on when --yes was given or a person at the terminal says yes; else stop, saying ``refused``."""
    if yes:
        return
    if not sys.stdin.isatty():
        raise NewsletterError(f"{refused}: input is not a terminal, so no one can confirm; pass --yes to go ahead")
    if not typer.confirm(question, default=False, err=True):
        raise NewsletterError(f"{refused}: not confirmed")


@dataclass
class Context:
    """What every command gets: the settings, and the database built from them on first use."""

    settings: Settings
    _engine: Engine | None = None

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            engine = make_engine(self.settings.database_url)
            file = sqlite_file(engine)
            if file is not None and not file.exists():  # SQLite would make an empty file just by looking; only init may
                raise NewsletterError(_NOT_INITIALISED.format(url=repr(engine.url)))
            _require_schema(engine)
            self._engine = engine
        return self._engine

    @property
    def sessions(self) -> sessionmaker[Session]:
        return make_sessionmaker(self.engine)


def _require_schema(engine: Engine) -> None:
    try:
        current = migrate.current_revision(engine)
    except Exception as exc:  # the driver's own error types differ per database
        raise NewsletterError(f"cannot open the database {engine.url!r} ({database_error(exc)}); "
                              "check NEWSLETTER_DATABASE_URL") from None
    if current != migrate.head_revision(engine):
        raise NewsletterError(_NOT_INITIALISED.format(url=repr(engine.url)))


_NOT_INITIALISED = "the database {url} is not initialised or is out of date: run 'newsletter init'"


def _ctx(typer_ctx: typer.Context) -> Context:
    return typer_ctx.find_root().obj


def _print_json(data: Any) -> None:
    # orjson: a dry run's picks for 100,000 subscribers are ~300 MB of JSON, 1 s to encode here where the
    # standard library's C encoder took 6 s (and its indenting one, pure Python, 22 s). Indented for a person
    # at a terminal, compact into a pipe or a file. Dates and times as ISO 8601; anything else as str().
    _write_json_bytes([orjson.dumps(data, default=str, option=_json_options()) + b"\n"])


def _redacted(data: Any) -> Any:
    """``data`` with the passwords of URLs in its strings replaced by ``***``, as the tables show them (sources'
    URLs may carry one: ``https://user:secret@host/feed``)."""
    if isinstance(data, str):
        return redact(data)
    if isinstance(data, dict):
        return {key: _redacted(value) for key, value in data.items()}
    if isinstance(data, list | tuple):
        return [_redacted(value) for value in data]
    return data


def _print_json_list(items: Sequence[Any], make: Callable[[Any], Any], *, chunk: int = 2_000) -> None:
    """``[make(item) for item in items]`` printed as ``_print_json`` would, a chunk at a time: the data of
    100,000 subscribers' picks at once was ~1.5 GB of Python objects and bytes, and the page faults of
    getting that memory cost seconds. The same bytes as one ``orjson.dumps`` of the whole list."""
    option = _json_options()
    parts = [b"["]
    for start in range(0, len(items), chunk):
        encoded = orjson.dumps([make(item) for item in items[start : start + chunk]], default=str, option=option)
        parts.append((b"," if start else b"") + encoded[1:-1].rstrip(b"\n"))  # the chunk's items without its brackets
        if len(parts) >= 8:
            _write_json_bytes(parts, flush=False)
            parts = []
    parts.append(b"\n]\n" if option & orjson.OPT_INDENT_2 and items else b"]\n")
    _write_json_bytes(parts)


def _json_options() -> int:
    return orjson.OPT_NON_STR_KEYS | (orjson.OPT_INDENT_2 if sys.stdout.isatty() else 0)


def _write_json_bytes(parts: list[bytes], *, flush: bool = True) -> None:
    sys.stdout.flush()  # what was printed before goes first
    if hasattr(sys.stdout, "buffer"):
        sys.stdout.buffer.writelines(parts)
        if flush:
            sys.stdout.buffer.flush()
    else:  # a text-only stream (an embedding caller's)
        sys.stdout.write(b"".join(parts).decode())


@app.callback()
def _root(typer_ctx: typer.Context) -> None:
    typer_ctx.obj = Context(load_settings())


@app.command(rich_help_panel=START)
def init(typer_ctx: typer.Context) -> None:
    """Create the database, or migrate it to the latest schema."""
    ctx = _ctx(typer_ctx)
    engine = make_engine(ctx.settings.database_url)
    try:
        migrate.upgrade(engine)
    except Exception as exc:
        raise NewsletterError(f"cannot migrate {engine.url!r} ({database_error(exc)}); check NEWSLETTER_DATABASE_URL") from None
    out.print(f"database ready at {engine.url!r} (schema {migrate.current_revision(engine)})")


# --- ingest --------------------------------------------------------------------------------------


@app.command(rich_help_panel=START)
def ingest(
    typer_ctx: typer.Context,
    sources: Annotated[list[str] | None, typer.Argument(
        help="Configured sources by id or name (as 'sources list' shows them), or URLs, file paths or shorthands "
             "(arxiv:cs.LG, hf-daily); default: the configured sources.")] = None,
    as_json: JsonOption = False,
) -> None:
    """Fetch sources and store their papers (one paper per arXiv id, versions merged)."""
    from newsletter.ingest.fetch import Fetcher, make_client
    from newsletter.ingest.run import configured_sources, ingest_sources
    from newsletter.ingest.sources import SourceSpec, resolve

    ctx = _ctx(typer_ctx)
    settings = ctx.settings
    with ctx.sessions() as session:
        rows = repo.list_sources(session)
    named = {row.url: row.name for row in rows if row.name}  # the table shows a source by the name it was given
    if sources:
        configured = {key: SourceSpec(row.url, row.kind) for row in rows for key in (str(row.id), row.name) if key}
        for given in sources:  # a bare number names a source by id: "5: no such file" said nothing useful
            if given.strip().isdigit() and given not in configured and not Path(given).exists():
                raise InvalidInput(f"no source with id {given.strip()}; {SOURCES_HINT}")
        specs = [configured.get(s) or resolve(s, hf_daily_url=settings.hf_daily_url) for s in sources]
    else:
        specs = [spec for spec, _ in configured_sources(settings, ctx.sessions)]
    if not specs:
        raise NewsletterError("no sources configured: add one with 'newsletter sources add arxiv:cs.LG' or pass a URL")
    with make_client(timeout_s=settings.fetch_timeout_s, contact_email=settings.contact_email) as client, _progress(as_json) as bar:
        names = [escape(inert(shorten(redact(spec.url), 70))) for spec in specs]  # progress descriptions are markup
        tasks = [bar.add_task(name, total=1, start=False) for name in names]

        def done(index: int, report) -> None:
            status = "[red]failed[/red]" if report.error else f"{report.new} new, {report.updated} updated"
            bar.update(tasks[index], completed=1, description=f"{names[index]}  {status}")

        reports = ingest_sources(specs, sessions=ctx.sessions, fetcher=Fetcher.from_settings(settings, client),
                                 now=utcnow(), on_start=lambda index, _spec: bar.start_task(tasks[index]), on_done=done)
    if as_json:
        _print_json(_redacted([r.as_dict() for r in reports]))
    else:
        # "outcome": the error, or a note ("same content as the last fetch") that is not one.
        table = Table("source", "fetched", "new", "updated", "unchanged", "outcome", "time", title="ingest")
        for r in reports:
            table.add_row(safe(named.get(r.source) or r.source), str(r.fetched), str(r.new), str(r.updated), str(r.unchanged),
                          Text(safe(r.error), style="red") if r.error else (safe(r.note) if r.note else "ok"), f"{r.seconds:.2f}s")
        out.print(table)
    if any(r.new or r.updated for r in reports):  # embedded now, not while the morning's digests wait
        from newsletter.jobs import embed_after_ingest
        from newsletter.runtime import Runtime

        status = err.status("embedding the new papers for the semantic ranker…") if err.is_terminal and not as_json else None
        with status or contextlib.nullcontext():
            embedded = embed_after_ingest(Runtime.build(settings, engine=ctx.engine), job="ingest")
        if embedded and not as_json:
            out.print(f"embedded {plural(embedded, 'new paper')} for the semantic ranker")
    failed = [r for r in reports if r.error]
    if failed:
        for r in failed:
            err.print(f"error: {safe(r.error or '')}")
        raise typer.Exit(1)


def safe(text: str) -> str:
    """Text from outside as the terminal should get it: no control sequences, no passwords."""
    return inert(redact(text))


def _progress(quiet: bool) -> Progress:
    return Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=err, disable=quiet or not err.is_terminal, transient=True)


@sources_app.command("add")
def sources_add(
    typer_ctx: typer.Context,
    spec: Annotated[str, typer.Argument(help="A feed URL, a file path, arxiv:cs.LG, arxiv:cs.AI+cs.LG or 'arxiv-query:QUERY'.")],
    name: Annotated[str | None, typer.Option(help="A display name.")] = None,
    check: Annotated[bool, typer.Option(help="Fetch the source once and refuse it if it is not a feed.")] = True,
) -> None:
    """Add a source; it is fetched once first, so a wrong URL is refused now rather than every night."""
    from newsletter.ingest.fetch import Fetcher, make_client
    from newsletter.ingest.run import read_source
    from newsletter.ingest.sources import resolve

    ctx = _ctx(typer_ctx)
    resolved = resolve(spec, hf_daily_url=ctx.settings.hf_daily_url)
    title, count = None, None
    if check:
        with make_client(timeout_s=ctx.settings.fetch_timeout_s, contact_email=ctx.settings.contact_email) as client:
            feed = read_source(resolved, fetcher=Fetcher.from_settings(ctx.settings, client), now=utcnow()).feed
        title, count = (feed.title, len(feed.papers)) if feed else (None, None)
    with ctx.sessions() as session, hint(SOURCES_HINT, about="source ", on=InvalidInput):
        repo.add_source(session, url=resolved.url, kind=resolved.kind, name=name or title)
        session.commit()
    # The check only reads the feed: nothing is stored (and "last fetched" stays "never") until an ingest.
    note = f" ({safe(title)}: it lists {plural(count or 0, 'paper')} now; 'newsletter ingest' stores them)" if title else ""
    out.print(f"added {resolved.kind} source {safe(resolved.url)}{note}")


@sources_app.command("list")
def sources_list(typer_ctx: typer.Context, as_json: JsonOption = False) -> None:
    """List the configured sources."""
    with _ctx(typer_ctx).sessions() as session:
        rows = [
            {"id": s.id, "url": s.url, "kind": s.kind, "name": s.name,
             "last_fetched_at": s.last_fetched_at, "last_error": s.last_error}
            for s in repo.list_sources(session)
        ]
    if as_json:
        _print_json(_redacted(rows))
        return
    table = Table("id", "kind", "name", "url", "last fetched", "last error", title="sources")
    for r in rows:
        table.add_row(str(r["id"]), str(r["kind"]), safe(str(r["name"] or "")), safe(str(r["url"])),
                      f"{r['last_fetched_at']:%Y-%m-%d %H:%M} UTC" if r["last_fetched_at"] else "never", safe(str(r["last_error"] or "")))
    out.print(table)


@sources_app.command("remove")
def sources_remove(typer_ctx: typer.Context, ref: Annotated[str, typer.Argument(help="The source's id or URL.")]) -> None:
    """Remove a source (the papers it brought stay)."""
    from newsletter.ingest.sources import resolve

    ctx = _ctx(typer_ctx)
    with ctx.sessions() as session, hint(SOURCES_HINT, about="no source "):
        ref = ref if ref.isdigit() else resolve(ref, hf_daily_url=ctx.settings.hf_daily_url).url
        row = repo.remove_source(session, ref=ref)
        session.commit()
    out.print(f"removed source {safe(row.url)}")


# --- subscribers ---------------------------------------------------------------------------------


TopicOption = Annotated[list[str] | None, typer.Option("--topic", "-t", help="A topic phrase; repeat for more.")]
ExcludeOption = Annotated[list[str] | None, typer.Option("--exclude", "-x", help="A phrase that rules a paper out.")]
CategoryOption = Annotated[list[str] | None, typer.Option("--category", "-c", help="An arXiv category, e.g. cs.LG.")]
AuthorOption = Annotated[list[str] | None, typer.Option(
    "--author", "-a", help="An author whose papers always make the digest.")]
SeedOption = Annotated[list[str] | None, typer.Option("--seed", "-s", help="An arXiv id: more papers like this one.")]
SeedBibtexOption = Annotated[Path | None, typer.Option(help="A BibTeX file whose arXiv papers are seeds.")]
DESCRIBE_HELP = "One sentence about the subscriber's work."
TIMEZONE_HELP = "IANA time zone, e.g. Europe/Berlin."
HOUR_HELP = "Local hour to send at (0–23)."
MINUTE_HELP = "Minute of that hour (0–59)."
FREQUENCY_HELP = "daily, weekdays (Monday to Friday) or weekly."
WEEKDAY_HELP = "For weekly: the day, e.g. monday or mon."
MAX_PAPERS_HELP = "Papers per digest at most, 1 to 100 (default: NEWSLETTER_DEFAULT_MAX_PAPERS)."
MIN_SCORE_HELP = ("Lowest word-match score to pick a paper, 0 to 1000 (default: NEWSLETTER_MIN_SCORE); the gate for papers "
                  "close in meaning rises with it.")


def _seed_ids(seed: list[str] | None, seed_bibtex: Path | None) -> list[str]:
    from newsletter.seeds import arxiv_ids_from_bibtex, normalise_ids

    seeds = normalise_ids(seed or [])
    if seed_bibtex is not None:
        if not seed_bibtex.exists():
            raise NewsletterError(f"{seed_bibtex}: no such file")
        if not seed_bibtex.is_file():  # /dev/zero, a FIFO, a folder: nothing to read to an end
            raise NewsletterError(f"{seed_bibtex}: not a regular file; give a BibTeX (.bib) file")
        try:
            found = arxiv_ids_from_bibtex(seed_bibtex.read_text(encoding="utf-8", errors="replace"))
        except InvalidInput as exc:
            raise NewsletterError(f"{seed_bibtex}: {exc}") from None
        if not found:  # random bytes, or a file of journal papers only, was taken as "no seeds" without a word
            raise NewsletterError(f"{seed_bibtex}: no entry with an arXiv id (eprint, an arxiv.org URL or an arXiv DOI); "
                                  "nothing to use as seed papers")
        seeds += found
    return list(dict.fromkeys(seeds))


# A subscriber can be added with none of these (an address list moved from elsewhere), but is told.
NO_INTERESTS = ("no topic, author, sentence or seed paper, so no digest is sent until one is set "
                "(categories and exclusions only narrow what those select)")


@subscribers_app.command("add")
def subscribers_add(
    typer_ctx: typer.Context,
    email: str,
    topic: TopicOption = None,
    exclude: ExcludeOption = None,
    category: CategoryOption = None,
    author: AuthorOption = None,
    describe: Annotated[str, typer.Option(help=DESCRIBE_HELP)] = "",
    timezone: Annotated[str, typer.Option(help=TIMEZONE_HELP)] = "UTC",
    hour: Annotated[int, typer.Option(help=HOUR_HELP)] = 7,
    minute: Annotated[int, typer.Option(help=MINUTE_HELP)] = 0,
    frequency: Annotated[str, typer.Option(help=FREQUENCY_HELP)] = "daily",
    weekday: Annotated[str | None, typer.Option(help=WEEKDAY_HELP + " Default: monday.")] = None,
    max_papers: Annotated[int | None, typer.Option(help=MAX_PAPERS_HELP)] = None,
    seed: SeedOption = None,
    seed_bibtex: SeedBibtexOption = None,
    min_score: Annotated[float | None, typer.Option(help=MIN_SCORE_HELP)] = None,
) -> None:
    """Add an active subscriber with their interests. A topic may carry a weight: "diffusion models^2".

    An address that asked to be forgotten ('subscribers forget') is refused: only its owner can
    subscribe it again.
    """
    from newsletter.subscribers_csv import check_exportable

    ctx = _ctx(typer_ctx)
    new = check_exportable(NewSubscriber(
        email=validate.normalize_email(email),
        preferences=Preferences.from_lists(topics=topic or [], exclude=exclude or [],
                                           categories=[validate.check_category(c) for c in category or []],
                                           authors=author or [], describe=describe, seed_papers=_seed_ids(seed, seed_bibtex),
                                           min_score=None if min_score is None else validate.check_min_score(min_score)),
        timezone=validate.check_timezone(timezone),
        send_hour=validate.check_hour(hour),
        send_minute=validate.check_minute(minute),
        frequency=(frequency := validate.check_frequency(frequency)),
        send_weekday=validate.check_weekday_given(weekday, frequency=frequency) or 0,
        max_papers=validate.check_max_papers(ctx.settings.default_max_papers if max_papers is None else max_papers),
    ))
    with ctx.sessions() as session:
        with hint(f"'newsletter subscribers show {new.email}' shows it", about=f"{new.email} is already", on=InvalidInput):
            row = subscriptions.add(session, ctx.settings, new, via=subscriptions.Via.CLI)
        if new.preferences.seed_papers:
            _fetch_seeds(ctx, session, list(new.preferences.seed_papers))
        session.commit()
        first = _next_digest(row)
    seeds_note = f", {plural(len(new.preferences.seed_papers), 'seed paper')}" if new.preferences.seed_papers else ""
    _note_excluded_topics(new)
    if not new.preferences.selects_nothing:
        out.print(f"added {new.email} (active{seeds_note}); first digest {first}")
    else:  # "first digest <date>", then "no digest is sent": which one? None, until they have an interest.
        out.print(f"added {new.email} (active{seeds_note}); no digest until it has an interest")
        err.print(f"note: {new.email} has {NO_INTERESTS}; 'newsletter subscribers update {new.email} --topic …' sets one")


@subscribers_app.command("update")
def subscribers_update(
    typer_ctx: typer.Context,
    email: str,
    topic: TopicOption = None,
    exclude: ExcludeOption = None,
    category: CategoryOption = None,
    author: AuthorOption = None,
    describe: Annotated[str | None, typer.Option(help=DESCRIBE_HELP)] = None,
    timezone: Annotated[str | None, typer.Option(help=TIMEZONE_HELP)] = None,
    hour: Annotated[int | None, typer.Option(help=HOUR_HELP)] = None,
    minute: Annotated[int | None, typer.Option(help=MINUTE_HELP)] = None,
    frequency: Annotated[str | None, typer.Option(help=FREQUENCY_HELP)] = None,
    weekday: Annotated[str | None, typer.Option(help=WEEKDAY_HELP)] = None,
    max_papers: Annotated[int | None, typer.Option(help="Papers per digest at most, 1 to 100.")] = None,
    seed: SeedOption = None,
    seed_bibtex: SeedBibtexOption = None,
    min_score: Annotated[float | None, typer.Option(help="Lowest score to pick a paper, 0 to 1000.")] = None,
) -> None:
    """Change a subscriber's interests or schedule: only the options given change, and it prints what changed.

    A list option (--topic, --exclude, --category, --author, --seed/--seed-bibtex) REPLACES the whole
    list: give every topic they should have; --topic "" empties the list. A new time zone, hour,
    minute, frequency or weekday moves the next digest to the first send moment of the new schedule.
    """
    from newsletter.subscribers_csv import check_exportable

    ctx = _ctx(typer_ctx)
    with ctx.sessions() as session:
        with hint(SUBSCRIBERS_HINT, about="no subscriber "):
            row = repo.get_subscriber(session, email=email)
        before = subscriptions.as_new_subscriber(row)
        after = _updated(before, ctx=ctx, topic=topic, exclude=exclude, category=category, author=author, describe=describe,
                         seed=seed, seed_bibtex=seed_bibtex, min_score=min_score, timezone=timezone, hour=hour, minute=minute,
                         frequency=frequency, weekday=weekday, max_papers=max_papers)
        changes = _differences(before, check_exportable(after))
        if not changes:
            out.print(f"{before.email}: nothing changed")
            return
        moved = subscriptions.update_preferences(session, ctx.settings, row.id, after, via=subscriptions.Via.CLI)
        if after.preferences.seed_papers != before.preferences.seed_papers and after.preferences.seed_papers:
            _fetch_seeds(ctx, session, list(after.preferences.seed_papers))
        session.commit()
        next_note = f"; next digest {_next_digest(row)}" if moved else ""
    out.print(f"updated {before.email}{next_note}")
    for name, (old, new) in changes.items():
        out.print(f"  {name}: {safe(old)} → {safe(new)}")
    _note_excluded_topics(after)


def _updated(current: NewSubscriber, *, ctx: Context, topic: list[str] | None, exclude: list[str] | None,
             category: list[str] | None, author: list[str] | None, describe: str | None, seed: list[str] | None,
             seed_bibtex: Path | None, min_score: float | None, timezone: str | None, hour: int | None, minute: int | None,
             frequency: str | None, weekday: str | None, max_papers: int | None) -> NewSubscriber:
    """``current`` with what the options of ``subscribers update`` give, validated; lists replace lists."""
    given = Preferences.from_lists(topics=topic or [], exclude=exclude or [],
                                   categories=[validate.check_category(c) for c in category or [] if c.strip()],
                                   authors=author or [], describe=describe, seed_papers=_seed_ids(seed, seed_bibtex))
    lists = {"topics": topic, "exclude": exclude, "categories": category, "authors": author, "describe": describe}
    preferences = replace(current.preferences, **{name: getattr(given, name) for name, value in lists.items() if value is not None})
    if seed is not None or seed_bibtex is not None:
        preferences = replace(preferences, seed_papers=given.seed_papers)
    if min_score is not None:
        preferences = replace(preferences, min_score=validate.check_min_score(min_score))
    schedule: dict[str, Any] = {
        "timezone": None if timezone is None else validate.check_timezone(timezone),
        "send_hour": None if hour is None else validate.check_hour(hour),
        "send_minute": None if minute is None else validate.check_minute(minute),
        "frequency": None if frequency is None else validate.check_frequency(frequency),
        "send_weekday": validate.check_weekday_given(weekday, frequency=validate.check_frequency(frequency or current.frequency)),
        "max_papers": None if max_papers is None else validate.check_max_papers(max_papers),
    }
    return replace(current, preferences=preferences, **{name: value for name, value in schedule.items() if value is not None})


def _differences(before: NewSubscriber, after: NewSubscriber) -> dict[str, tuple[str, str]]:
    """What changed, field by field, as the export names and writes the fields."""
    from newsletter.subscribers_csv import LISTS, subscriber_row

    def text(name: str, value: Any) -> str:
        shown = "; ".join(value) if name in LISTS else "" if value is None else str(value)
        return shown or "(none)"

    old, new = subscriber_row(before), subscriber_row(after)
    return {name: (text(name, old[name]), text(name, new[name])) for name in old if old[name] != new[name]}


def _note_excluded_topics(subscriber: NewSubscriber) -> None:
    """A topic whose every match holds an excluded phrase (``--topic diffusion --exclude diffusion``) selects
    nothing, for ever: accepted without a word, it looked like a quiet field."""
    from newsletter.score.text import contains_phrase, exclusion_forms, phrase_terms

    for topic in subscriber.preferences.topics:
        terms = phrase_terms(topic.phrase)
        for excluded in subscriber.preferences.exclude:  # matched as the ranking matches exclusions
            if any(contains_phrase(terms, form) for form in exclusion_forms(excluded)):
                err.print(f"note: every paper matching the topic {safe(topic.phrase)!r} holds the excluded "
                          f"{safe(excluded)!r}, so that topic selects nothing")
                break


def _next_digest(row: Subscriber) -> str:
    """``2026-12-02 06:00 UTC (07:00 Europe/Berlin)``."""
    from zoneinfo import ZoneInfo

    if row.next_send_at is None:
        return "not scheduled"
    local = row.next_send_at.replace(tzinfo=dt.UTC).astimezone(ZoneInfo(row.timezone))
    return f"{row.next_send_at:%Y-%m-%d %H:%M} UTC ({local:%a %H:%M} {row.timezone})"


def _fetch_seeds(ctx: Context, session: Session, ids: list[str]) -> None:
    from newsletter.ingest.fetch import Fetcher, make_client
    from newsletter.seeds import ensure_seed_papers

    try:
        with make_client(timeout_s=ctx.settings.fetch_timeout_s, contact_email=ctx.settings.contact_email) as client:
            missing = ensure_seed_papers(session, ids=ids, fetcher=Fetcher.from_settings(ctx.settings, client),
                                         api_url=ctx.settings.arxiv_api_url)
    except FeedError as exc:  # the user gave arXiv ids, not a URL: say what was being fetched, and what was kept
        raise NewsletterError(f"cannot fetch the seed paper(s) {', '.join(ids)} from the arXiv API ({exc}); nothing was "
                              "changed: try again when arXiv can be reached, or leave out the seeds it does not have yet") from None
    if missing:
        raise NewsletterError(f"arXiv does not know the seed paper(s) {', '.join(missing)}: check the ids")


@app.command(rich_help_panel=DAILY)
def feedback(
    typer_ctx: typer.Context,
    email: str,
    paper: Annotated[str, typer.Argument(help="The paper's arXiv id (or key).")],
    direction: Annotated[str, typer.Argument(help="up (more like this) or down (less like this).")],
) -> None:
    """Record "more like this" / "less like this" for a subscriber; their next digest follows it."""
    direction = direction.strip().lower()  # "UP" too
    if direction not in ("up", "down"):
        raise NewsletterError(f"{direction!r}: say up (more like this) or down (less like this)")
    with _ctx(typer_ctx).sessions() as session:
        with hint(SUBSCRIBERS_HINT, about="no subscriber "):
            subscriber = repo.get_subscriber(session, email=email)
        with hint(PAPER_HINT, about="no paper "):
            row = repo.get_paper(session, ref=paper)
        subscriptions.record_feedback(session, subscriber_id=subscriber.id, paper_id=row.id,
                                      value=1 if direction == "up" else -1)
        session.commit()
        title = row.title
    out.print(f"noted: {'more' if direction == 'up' else 'fewer'} papers like “{safe(title)}” for {email.strip().lower()}")


@subscribers_app.command("list")
def subscribers_list(
    typer_ctx: typer.Context,
    status: Annotated[str | None, typer.Option(help="Only this status: pending, active, paused, unsubscribed, bounced.")] = None,
    as_json: JsonOption = False,
) -> None:
    """List subscribers."""
    if status is not None and status not in SUBSCRIBER_STATUSES:  # it printed "0 subscribers"
        raise NewsletterError(f"--status {status!r} is not a subscriber status: use {', '.join(SUBSCRIBER_STATUSES)}")
    with _ctx(typer_ctx).sessions() as session:
        rows = [repo.subscriber_view(s) for s in repo.list_subscribers(session, status=status)]
    if as_json:
        _print_json(rows)
        return
    if len(rows) > LIST_TABLE_ROWS:
        by_status = Counter(r["status"] for r in rows)
        out.print(f"{plural(len(rows), 'subscriber')}: " + ", ".join(f"{s} {n:,}" for s, n in sorted(by_status.items())))
        out.print(f"(a table of {LIST_TABLE_ROWS:,} at most: use --json for all, or --status to narrow)")
        rows = rows[:LIST_TABLE_ROWS]
    table = Table("email", "status", "topics", "categories", "time zone", "hour", "max", title=plural(len(rows), "subscriber"))
    for r in rows:
        table.add_row(safe(r["email"]), r["status"], safe(shorten("; ".join(r["topics"]), 60)), " ".join(r["categories"]),
                      r["timezone"], str(r["send_hour"]), str(r["max_papers"]))
    out.print(table)


@subscribers_app.command("show")
def subscribers_show(typer_ctx: typer.Context, email: str, as_json: JsonOption = False) -> None:
    """Show a subscriber's status and all preferences."""
    with _ctx(typer_ctx).sessions() as session, hint(SUBSCRIBERS_HINT, about="no subscriber "):
        subscriber = repo.get_subscriber(session, email=email)
        view, uninterested = repo.subscriber_view(subscriber), repo.preferences_record(subscriber.preferences).selects_nothing
    if as_json:
        _print_json(view)
        return
    table = Table("field", "value", show_header=False, title=view["email"])
    for key, value in view.items():
        if key == "send_weekday" and view.get("frequency") != "weekly":
            continue  # only a weekly digest has a weekday
        if value is None:  # not "None": min_score unset takes the installation's
            shown = "the default (NEWSLETTER_MIN_SCORE)" if key == "min_score" else "–"
        else:
            shown = "; ".join(value) if isinstance(value, list) else str(value)
        table.add_row(key, safe(shown))
    out.print(table)
    if uninterested and view["status"] == "active":
        err.print(f"note: {view['email']} has {NO_INTERESTS}")


def _existing_address(ctx: Context, email: str) -> str:
    """The stored address of ``email``, or NotFound with the hint (before asking anyone anything)."""
    with ctx.sessions() as session, hint(SUBSCRIBERS_HINT, about="no subscriber "):
        return repo.get_subscriber(session, email=email).email


@subscribers_app.command("remove")
def subscribers_remove(typer_ctx: typer.Context, email: str, yes: YesOption = False) -> None:
    """Delete a subscriber with their preferences and delivery history; asks first unless --yes.

    The address may be added or imported again later; 'subscribers forget' prevents that.
    """
    ctx = _ctx(typer_ctx)
    address = _existing_address(ctx, email)
    confirm(f"Remove {address} with their preferences and delivery history?", yes=yes, refused=f"{address} was not removed")
    with ctx.sessions() as session, hint(SUBSCRIBERS_HINT, about="no subscriber "):
        subscriptions.remove(session, address)
        session.commit()
    out.print(f"removed {address}")


@subscribers_app.command("forget")
def subscribers_forget(typer_ctx: typer.Context, email: str, yes: YesOption = False) -> None:
    """Delete everything about an address (subscription, preferences, deliveries, feedback); asks first unless --yes.

    Only a keyed hash of the address is kept (NEWSLETTER_SECRET_KEY keys it: keep the key), so 'subscribers
    add' and 'subscribers import' refuse it from then on; only its owner can subscribe it again, by
    confirming a new subscription.
    """
    ctx = _ctx(typer_ctx)
    ctx.settings.require("secret_key", purpose="forgetting an address")
    address = _existing_address(ctx, email)
    confirm(f"Forget {address}: delete their subscription, preferences, deliveries and feedback for good?", yes=yes,
            refused=f"{address} was not forgotten")
    with ctx.sessions() as session, hint(SUBSCRIBERS_HINT, about="no subscriber "):
        subscriptions.forget(session, ctx.settings, address)
        session.commit()
    out.print(f"forgot {address}: their data is deleted and only a keyed hash of the address is kept; "
              "no add or import can bring it back")


@subscribers_app.command("pause")
def subscribers_pause(typer_ctx: typer.Context, email: str) -> None:
    """Send an active subscriber nothing until 'subscribers resume' (their preferences are kept)."""
    ctx = _ctx(typer_ctx)
    with ctx.sessions() as session, hint(SUBSCRIBERS_HINT, about="no subscriber "):
        subscriptions.pause(session, ctx.settings, email)
        session.commit()
    address = email.strip().lower()
    out.print(f"paused {address}: no digests until 'newsletter subscribers resume {address}'")


@subscribers_app.command("resume")
def subscribers_resume(typer_ctx: typer.Context, email: str) -> None:
    """Send a paused subscriber their digests again, from their next send time on."""
    ctx = _ctx(typer_ctx)
    with ctx.sessions() as session, hint(SUBSCRIBERS_HINT, about="no subscriber "):
        subscriptions.resume(session, ctx.settings, email)
        session.commit()
        row = repo.get_subscriber(session, email=email)
        out.print(f"resumed {row.email}: next digest {_next_digest(row)}")


@subscribers_app.command("import")
def subscribers_import(
    typer_ctx: typer.Context,
    file: Annotated[Path, typer.Argument(help="A CSV file with a header row, or a JSON list; see the README for the fields.")],
    skip_invalid: Annotated[bool, typer.Option(help="Import the valid rows even if some are invalid.")] = False,
    fmt: Annotated[str | None, typer.Option("--format", help="csv or json (default: json for a .json file, else csv).")] = None,
    as_json: JsonOption = False,
) -> None:
    """Import subscribers from CSV or JSON (what 'subscribers export' writes); all-or-nothing unless --skip-invalid.

    Addresses that asked to be forgotten are skipped and listed (they do not stop the import).
    """
    from newsletter.subscribers_csv import FORMATS, read_subscribers_file

    ctx = _ctx(typer_ctx)
    if fmt is not None and fmt not in FORMATS:
        raise NewsletterError(f"--format {fmt!r}: use csv or json")
    if not file.is_file():
        raise NewsletterError(f"{file}: no such file")
    parsed = read_subscribers_file(file, fmt=fmt, default_max_papers=ctx.settings.default_max_papers)
    with ctx.sessions() as session:
        parsed.reject_existing(repo.existing_emails(session, emails=parsed.lines))
        if ctx.settings.secret_key:  # the forgotten are kept as hashes keyed with it; subscriptions.add does the same
            forgotten = subscriptions.forgotten_among(session, ctx.settings, [s.email for s in parsed.subscribers])
            parsed.skip(forgotten, why="asked to be forgotten; only its owner can subscribe it again (skipped)")
        imported = 0
        if parsed.subscribers and (skip_invalid or not parsed.errors):
            imported = subscriptions.import_subscribers(session, ctx.settings, parsed.subscribers)
            session.commit()
    if as_json:
        _print_json({"imported": imported, "errors": parsed.errors, "skipped": parsed.skipped})
    else:
        for line in sorted([*parsed.errors, *parsed.skipped], key=parsed.number_of)[:50]:  # in the file's order
            err.print(safe(line))
        if len(parsed.errors) + len(parsed.skipped) > 50:
            more = len(parsed.errors) + len(parsed.skipped) - 50
            err.print(f"... and {plural(more, 'more problem')} (--json lists them all)")
        left_out = [f"{plural(parsed.invalid_rows, 'invalid row')} left out"] if parsed.errors else []
        left_out += [f"{len(parsed.skipped):,} skipped"] if parsed.skipped else []
        if skip_invalid or not parsed.errors:  # else the error below says "nothing imported", once
            out.print(f"imported {plural(imported, 'subscriber')} from {file}" + (f" ({', '.join(left_out)})" if left_out else ""))
            if imported and (uninterested := sum(s.preferences.selects_nothing for s in parsed.subscribers)):
                err.print(f"note: {plural(uninterested, 'of them has', 'of them have')} {NO_INTERESTS}")
    if parsed.errors and not skip_invalid:
        raise NewsletterError(f"{file}: {plural(parsed.invalid_rows, 'invalid row')}, nothing imported; "
                              "fix them or pass --skip-invalid")


@subscribers_app.command("export")
def subscribers_export(
    typer_ctx: typer.Context,
    fmt: Annotated[str, typer.Option("--format", help="csv or json.")] = "csv",
    out_file: Annotated[Path | None, typer.Option("--out", help="Write to this file (default: standard output).")] = None,
) -> None:
    """Write the active and paused subscribers in the import format, by address: 'subscribers import' reads it back.

    Pending, unsubscribed and bounced addresses are left out: an import subscribes people without
    asking them, so it must not bring back anyone who did not confirm or who left.
    """
    from newsletter.subscribers_csv import FORMATS, IMPORTABLE_STATUSES, write_subscribers

    if fmt not in FORMATS:
        raise NewsletterError(f"--format {fmt!r}: use csv or json")
    if out_file is not None and out_file.is_dir():
        raise NewsletterError(f"--out {out_file} is a folder: give a file name, e.g. {out_file / ('subscribers.' + fmt)}")
    if out_file is not None and not out_file.parent.is_dir():
        raise NewsletterError(f"--out {out_file}: the folder {out_file.parent} does not exist; create it or choose another path")
    with _ctx(typer_ctx).sessions() as session:
        people = [subscriptions.as_new_subscriber(row) for row in repo.list_subscribers(session)
                  if row.status in IMPORTABLE_STATUSES]
    if out_file is None:
        write_subscribers(people, sys.stdout, fmt=fmt)
        return
    try:
        with out_file.open("w", encoding="utf-8", newline="") as handle:
            count = write_subscribers(people, handle, fmt=fmt)
    except OSError as exc:
        raise NewsletterError(f"--out {out_file}: cannot write it ({exc.strerror}); choose another path") from None
    out.print(f"exported {plural(count, 'subscriber')} to {out_file}")


@app.command(rich_help_panel=DAILY)
def stats(typer_ctx: typer.Context, as_json: JsonOption = False) -> None:
    """Subscribers by status; sends, bounces, unsubscribes and confirmations over 7 and 30 days; the top topics."""
    from newsletter.stats import read_stats

    with _ctx(typer_ctx).sessions() as session:
        report = read_stats(session, now=utcnow())
    if as_json:
        _print_json(report.as_dict())
    else:
        print_stats(report)


def print_stats(report: Any) -> None:  # report: stats.Stats
    from rich import box

    def table(*columns: str, title: str) -> Table:
        return Table(*columns, title=title, title_justify="left", box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)

    counts = ", ".join(f"{status} {count:,}" for status, count in report.by_status.items())
    out.print(f"{plural(report.subscribers, 'subscriber')}: {counts}")
    windows = table("", *(f"last {w.days} days" for w in report.windows), title=f"at {report.now:%Y-%m-%d %H:%M} UTC")
    for name, label in (("sent", "digests sent"), ("bounces", "bounces"), ("unsubscribes", "unsubscribes"),
                        ("confirmations", "confirmations"), ("added", "added by the admin")):
        windows.add_row(label, *(f"{getattr(w, name):,}" for w in report.windows))
    for column in windows.columns[1:]:
        column.justify = "right"
    out.print(windows)
    if not report.top_topics:
        out.print("top topics: none (no active subscriber has a topic)")
        return
    topics = table("topic", "subscribers", title="top topics (active subscribers)")
    topics.columns[1].justify = "right"
    for entry in report.top_topics:
        topics.add_row(safe(entry.topic), f"{entry.subscribers:,}")
    out.print(topics)


# --- digest --------------------------------------------------------------------------------------


# The years --at and --date accept: schedules add weeks to a moment (year 9999 overflowed), and a zone offset a day.
FIRST_YEAR, LAST_YEAR = 1971, 2998
FUTURE_SLACK = dt.timedelta(minutes=5)  # a real run's --at may be this far ahead of the clock (a typed "now")


def _parse_date(value: str | None) -> dt.date | None:
    if value is None:
        return None
    try:
        day = dt.date.fromisoformat(value)
    except ValueError:
        raise NewsletterError(f"--date {value!r} is not a date: use YYYY-MM-DD") from None
    if not FIRST_YEAR <= day.year <= LAST_YEAR:
        raise NewsletterError(f"--date {value!r} is out of range: years {FIRST_YEAR}–{LAST_YEAR}")
    return day


def _parse_instant(value: str | None) -> dt.datetime:
    """``--at``: an ISO 8601 instant (2026-12-01T06:00:00Z, or with an offset); a bare date-time is UTC."""
    if value is None:
        return dt.datetime.now(dt.UTC)
    try:
        moment = dt.datetime.fromisoformat(value.strip().replace("z", "Z").replace("Z", "+00:00"))
    except ValueError:
        raise NewsletterError(f"--at {value!r} is not an instant: use e.g. 2026-12-01T06:00:00Z") from None
    if not FIRST_YEAR <= moment.year <= LAST_YEAR:
        raise NewsletterError(f"--at {value!r} is out of range: years {FIRST_YEAR}–{LAST_YEAR}")
    return moment.replace(tzinfo=dt.UTC) if moment.tzinfo is None else moment.astimezone(dt.UTC)


def _refuse_future(at: dt.datetime) -> None:
    """A real run at a future --at records every issue until then as missed and moves each schedule past it:
    one mistyped year stopped every digest for decades. Only on purpose (--allow-future: a test database)."""
    if at > dt.datetime.now(dt.UTC) + FUTURE_SLACK:
        raise NewsletterError(
            f"--at {at:%Y-%m-%d %H:%M} UTC is in the future: a real run then would record every digest until then as "
            "missed and move each subscriber's schedule past it. See that moment's digests with --dry-run; on a test "
            "database, add --allow-future")


AtOption = Annotated[str | None, typer.Option(
    "--at", help="Run as if now were this instant, e.g. 2026-12-01T06:00:00Z or 2026-12-01T07:00:00+01:00; "
                 "a time without a zone is UTC (tests, backfills, checking a schedule).")]


@app.command(rich_help_panel=DAILY)
def digest(
    typer_ctx: typer.Context,
    at: AtOption = None,
    dry_run: Annotated[bool, typer.Option(
        help="Score every active subscriber's next digest now, whatever their hour; record and send nothing.")] = False,
    only: Annotated[str | None, typer.Option(
        help="Send this subscriber's digest now, whatever their hour (still one per local date); prints its picks.")] = None,
    verbose: VerboseOption = False,
    as_json: JsonOption = False,
    allow_future: Annotated[bool, typer.Option(
        help="Let a real run's --at be in the future (a test database: every issue until then counts as missed).")] = False,
) -> None:
    """Plan and send every digest due now: each subscriber's at their own local hour, at most one per local date.

    Safe to run as often as you like and beside other runs or the daemon (a crontab line every few
    minutes works). Prints a summary (subscribers, candidates, deliveries by outcome, time, rate,
    errors); the picks of each subscriber with --verbose or --only, all of it as data with --json.
    """
    from newsletter.pipeline import run_digest
    from newsletter.runtime import Runtime
    from newsletter.send.mailer import RecordingMailer

    ctx = _ctx(typer_ctx)
    now = _parse_instant(at)
    if not dry_run and not allow_future:
        _refuse_future(now)
    runtime = Runtime.build(ctx.settings, engine=ctx.engine, connect=RecordingMailer if dry_run else None)
    started = time.perf_counter()
    with _progress(as_json) as bar, hint(SUBSCRIBERS_HINT, about="no subscriber "):
        task = bar.add_task("sending", total=None)
        run, interrupted = asyncio.run(_until_done_or_interrupted(lambda stop: run_digest(
            runtime, now=now, only=only, dry_run=dry_run, stop=stop, progress=lambda done: bar.update(task, completed=done),
            keep_picks=as_json or verbose or only is not None),
            graceful=not dry_run))  # a dry run writes nothing: Ctrl-C stops it at once
    seconds = time.perf_counter() - started
    if as_json:
        def as_data(pick: Any) -> dict[str, Any]:  # pick: plan.Pick
            return {"email": pick.email, "issue_date": pick.issue_date, "papers": picks_as_data(pick.papers)}

        if dry_run:
            _print_json_list(run.picks, as_data)
        else:
            _print_json({"at": now, "picks": [as_data(p) for p in run.picks], "outcomes": dict(run.outcomes),
                         "missed": run.missed, "candidates": run.candidates, "seconds": round(seconds, 3),
                         "taken_over": run.taken_over, "held_elsewhere": run.held_elsewhere, "held_until": run.held_until,
                         "held_by_dead": run.held_by_dead, "next_due_at": _next_due(runtime)})
    else:
        if (verbose or only) and run.picks:  # a second --only the same day plans nothing: no empty table
            print_picks(run.picks, title=f"digests at {now:%Y-%m-%d %H:%M} UTC")
        print_digest_summary(run, seconds=seconds, dry_run=dry_run)
        if not run.due and not dry_run and not run.outcomes:
            print_why_nothing_was_sent(runtime, only=only, now=now, at_given=at is not None)
    for message in run.errors:
        err.print(f"error: {safe(message)}")
    if interrupted:
        err.print(f"error: interrupted ({interrupted}): no further message was taken, {run.outcomes.get('sent', 0):,} sent; "
                  "the rest stays pending for the next run")
        raise typer.Exit(130 if interrupted == "Ctrl-C" else 143)
    if run.errors:
        raise typer.Exit(1)


async def _until_done_or_interrupted(start: Callable[[asyncio.Event], Any], *, graceful: bool) -> tuple[Any, str | None]:
    """Run ``start(stop)``; the first Ctrl-C or SIGTERM (what ``timeout`` and systemd send) sets ``stop``: no
    further message is taken, those in flight finish and are recorded, what was claimed is released. Returns
    the result and the name of the signal, if one came.

    A second one stops the process at once, as a crash would: waiting for a relay that holds a message (or a
    whole SMTP timeout in a half-closed connection) is what the person pressing it does not want. The ledger
    is built for that: a message in flight stays ``sending`` and is sent once more, with the same Message-ID,
    by the next run, which takes this process's claims over at once (its pid is gone).
    Cancelling the run instead (asyncio.run's default) also left messages ``sending``, after a wait."""
    import signal

    stop, loop = asyncio.Event(), asyncio.get_running_loop()
    received: list[str] = []

    def on_signal(name: str) -> None:
        if received:
            for console in (out, err):  # the progress bar hid the cursor; exiting at once skips its restoring it
                console.show_cursor(True)
            sys.stderr.write(f"error: stopped at once ({received[0]}, then {name}): the messages being handed to the relay "
                             "are sent once more, with the same Message-ID, by the next run, with the rest\n")
            sys.stderr.flush()
            os._exit(130 if name == "Ctrl-C" else 143)
        received.append(name)
        stop.set()

    handled = {signal.SIGINT: "Ctrl-C", signal.SIGTERM: "SIGTERM"} if graceful else {}
    try:
        for number, name in handled.items():
            loop.add_signal_handler(number, on_signal, name)
    except (NotImplementedError, RuntimeError, ValueError):  # not the main thread, or a platform without it
        handled = {}
    try:
        return await start(stop), (received[0] if received else None)
    finally:
        for number in handled:
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.remove_signal_handler(number)


def picks_as_data(papers: list) -> list[dict[str, Any]]:
    """A subscriber's picks in the email's order; ``order`` says why a paper sits above better-scored ones.

    Called once per subscriber of a dry run (100,000 of them): the common case, picks in score order,
    takes one comparison per pick, and the reasons stay tuples (JSON writes them as arrays)."""
    data = [{"arxiv_id": r.paper.arxiv_id, "key": r.paper.key, "title": r.paper.title, "score": round(r.score, 4),
             "reasons": r.reasons} for r in papers]
    scores = [r.score for r in papers]
    if all(a >= b for a, b in itertools.pairwise(scores)):
        return data
    # Out of order: a better score below it, or a worse one above it (suffix maxima, prefix minima: one pass each).
    best_below = list(itertools.accumulate(reversed(scores[1:] + [float("-inf")]), max))[::-1]
    worst_above = list(itertools.accumulate([float("inf")] + scores[:-1], min))
    for position, (entry, ranked) in enumerate(zip(data, papers, strict=True)):
        out_of_order = best_below[position] > ranked.score or worst_above[position] < ranked.score
        if out_of_order and ranked.placement:
            entry["order"] = ranked.placement
    return data


def _next_due(runtime: Any) -> dt.datetime | None:  # runtime: Runtime
    """The earliest next send moment of an active subscriber, aware UTC (what the text output says after a quiet run)."""
    with runtime.sessions() as session:
        upcoming = repo.next_send_at(session)
    return upcoming.replace(tzinfo=dt.UTC) if upcoming else None


def print_why_nothing_was_sent(runtime: Any, *, only: str | None, now: dt.datetime,  # runtime: Runtime
                               at_given: bool = False) -> None:
    """After a run that sent nothing: when the next digest is due, or that ``only``'s of today went already."""
    from newsletter import schedule

    if only is None:
        upcoming = _next_due(runtime)
        moment = f"at {now:%Y-%m-%d %H:%M} UTC" if at_given else "now"  # --at: "now" was another moment
        if upcoming is not None and upcoming <= now:
            # Due, and yet not planned by this run: another run or daemon is at them (it plans in batches), or a
            # schedule cannot be worked out (the log names it). "The next is due at <a past moment>" said neither.
            out.print(f"nothing for this run {moment}: the digests due since {upcoming:%Y-%m-%d %H:%M} UTC were not "
                      "planned by it; another run or daemon is planning them, or the log says why not")
        elif upcoming is not None:  # a new user's first run: say when, and how to see one now
            out.print(f"nobody is due {moment}; the next digest is due at {upcoming:%Y-%m-%d %H:%M} UTC "
                      "('digest --only EMAIL' sends one now, 'digest --dry-run' shows them all)")
        return
    with runtime.sessions() as session:
        subscriber = repo.get_subscriber(session, email=only)
        issue_date = schedule.local_date(subscriber.timezone, now)
        status = repo.delivery_status(session, subscriber_id=subscriber.id, issue_date=issue_date)
    if status is not None:
        out.print(f"{safe(subscriber.email)}: their digest of {issue_date} (their local date) {_DAY_WENT.get(status, status)}; "
                  "at most one a day")


_DAY_WENT = {"sent": "went out already", "empty": "was a quiet day (nothing above their minimum score)",
             "missed": "was missed", "failed": "failed", "expired": "expired", "pending": "is waiting to be sent",
             "sending": "is being sent", "retry": "is waiting for a retry", "unknown": "is waiting for a retry"}


def print_digest_summary(run: Any, *, seconds: float, dry_run: bool) -> None:  # run: pipeline.DigestRun
    missed = f"{plural(run.missed, 'issue')} missed (not planned before their local day ended)" if run.missed else ""
    if not dry_run and not run.due:
        # Nobody newly due: what this run sent (a crashed run's rest, retries) was planned earlier, and "0
        # subscribers due, scored against 0 candidate papers" above "sent 2,791" read as a contradiction.
        # With nothing sent either, 'digest' says after the summary when the next digest is due.
        earlier = "nobody newly due; sending what earlier runs planned" if run.outcomes else "nobody newly due"
        if run.outcomes or missed:
            out.print(f"digest at {run.now:%Y-%m-%d %H:%M} UTC: {earlier}" + (f"; {missed}" if missed else ""))
    else:
        # A dry run scores everyone's next digest, whatever their hour: nobody is "due" in it.
        who = f"the next digests of {plural(run.due, 'subscriber')}" if dry_run else f"{plural(run.due, 'subscriber')} due"
        out.print(f"digest at {run.now:%Y-%m-%d %H:%M} UTC: {who}, scored against {plural(run.candidates, 'candidate paper')}; "
                  f"{run.served:,} with papers, {run.due - run.served:,} quiet" + (f"; {missed}" if missed else ""))
        if run.due and not run.candidates:
            out.print("no papers to pick from in their windows: 'newsletter ingest' fetches them "
                      "('newsletter sources list' shows the sources)")
    if dry_run:
        out.print(f"dry run: nothing recorded or sent ({seconds:.1f} s)")
        return
    if run.enqueued is not None:
        out.print(f"queued {plural(run.enqueued, 'send batch', 'send batches')} for the workers (newsletter worker) ({seconds:.1f} s)")
        return
    sent = run.outcomes.get("sent", 0)
    # With an error and no outcome, nothing was sent because the run stopped (an outbox it cannot write), not
    # because nothing was due.
    none = "none sent, the run stopped (below)" if run.errors else "nothing to send"
    outcomes = ", ".join(f"{status} {count:,}" for status, count in sorted(run.outcomes.items())) or none
    rate = f", {sent / seconds:,.0f} emails/s" if sent and seconds > 0 else ""
    out.print(f"deliveries: {outcomes} ({seconds:.1f} s{rate})")
    if run.taken_over:
        out.print(f"taken over: {plural(run.taken_over, 'delivery', 'deliveries')} of a sender on this host that died "
                  "(those it was handing over are retried once, with the same Message-ID)")
    if run.held_by_dead:  # it died while this run went on: nothing renews its lease, and a run now takes them over
        out.print(f"held by a sender of this host that died during this run: {plural(run.held_by_dead, 'delivery', 'deliveries')}; "
                  "run 'newsletter digest' again to send them now")
    if run.held_elsewhere > run.held_by_dead:
        out.print(f"held by another sender: {plural(run.held_elsewhere - run.held_by_dead, 'delivery', 'deliveries')}, its lease "
                  f"running until {run.held_until:%H:%M:%S} UTC; if that sender has stopped, a run after then sends them")
    if run.errors:
        out.print(f"errors: {len(run.errors):,} (below)")


# --- status --------------------------------------------------------------------------------------


@app.command(rich_help_panel=DAILY)
def status(typer_ctx: typer.Context, as_json: JsonOption = False) -> None:
    """The daemon's heartbeat, each source's health, deliveries and the next sends; exit 1 if a person is needed.

    A person is needed when the daemon went silent (no beat for 5 minutes and no clean stop), a source
    failed twice in a row, the relay refuses the login, or deliveries expired in the last 24 hours. A
    daemon that is not running at all is no fault: 'newsletter digest' from cron is a fine setup.
    """
    from newsletter.runtime import holder_is_dead
    from newsletter.status import read_status

    with _ctx(typer_ctx).sessions() as session:
        report = read_status(session, now=utcnow(), is_dead=holder_is_dead)
    if as_json:
        _print_json(_redacted(report.as_dict()))
    else:
        print_status(report)
    if not report.ok:
        raise typer.Exit(1)


def print_status(report: Any) -> None:  # report: status.Report
    from rich import box

    from newsletter.status import span

    def when(moment: dt.datetime | None) -> str:
        if moment is None:
            return "–"
        ahead = moment - report.now
        relative = f"in {span(ahead)}" if ahead.total_seconds() > 0 else f"{span(-ahead)} ago"
        return f"{moment:%H:%M}, {relative}" if abs(ahead) < dt.timedelta(hours=12) else f"{moment:%b %d %H:%M}, {relative}"

    def table(*columns: str, title: str) -> Table:
        return Table(*columns, title=title, title_justify="left", box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)

    headline = Text("status: ")
    if report.ok:
        headline.append("OK", style="bold green")
    else:
        headline.append("NEEDS ATTENTION", style="bold red").append(" — " + "; ".join(safe(p) for p in report.needs_a_person))
    out.print(headline)
    daemon, process = report.daemon, report.daemon.process
    line = Text("daemon: ").append(daemon.state, style={"running": "green", "silent": "bold red"}.get(daemon.state, "yellow"))
    if process is not None and process.stopped_at is not None:
        line.append(f" ({safe(process.id)} stopped {when(process.stopped_at)})")
    elif process is not None:
        up = daemon.uptime(now=report.now) or dt.timedelta()
        line.append(f" ({safe(process.id)}, up {span(up)}, last beat {when(process.beat_at)})")
    out.print(line)
    for other in daemon.others:  # the jobs table below is the latest one's; the others' faults are in the headline
        out.print(f"daemon: also running ({safe(other.id)}, up {span(report.now - other.started_at)}, "
                  f"last beat {when(other.beat_at)})")
    if process is not None and process.jobs and daemon.state != "not running":
        jobs = table("job", "next run", "last run", "took", "last result", title="jobs (UTC)")
        for job in process.jobs:
            result = Text(safe(job.last_error), style="red") if job.last_error else Text(safe(job.last_result or ""))
            took = "" if job.last_seconds is None else f"{job.last_seconds:.1f} s"
            jobs.add_row(safe(job.id), when(job.next_run_at), when(job.last_run_at), took, result)
        out.print(jobs)
    if report.sources:
        sources = table("source", "last fetch", "last success", "new", "failures", "last error / note", title="sources (UTC)")
        for s in report.sources:
            failures = Text(str(s.consecutive_failures), style="bold red" if s.consecutive_failures >= 2 else "")
            detail = Text(safe(s.last_error), style="red") if s.last_error else Text(safe(s.last_note or ""))
            sources.add_row(safe(s.label), when(s.last_fetched_at), when(s.last_success_at),
                            "" if s.last_new is None else str(s.last_new), failures, detail)
        out.print(sources)
    else:
        out.print("sources: none configured")
    d = report.deliveries
    counts = ", ".join(f"{name} {count:,}" for name, count in d.by_status.items() if count) or "none"
    out.print(f"deliveries recorded in the last 24 h: {counts}")
    if d.held:
        dead = f", {d.held_by_dead:,} of them by a sender of this host that died" if d.held_by_dead else ""
        out.print(f"held by senders now: {plural(d.held, 'delivery', 'deliveries')}{dead}")
    oldest = f"; oldest unsent {when(d.oldest_unsent_at)}" if d.oldest_unsent_at else ""
    out.print(f"retries waiting {d.retries_waiting:,}{oldest}; expired in the last 24 h {d.expired_recently:,}; "
              f"subscribers bounced {d.bounced_subscribers:,}, suppressed {d.suppressed_subscribers:,}")
    if report.next_sends:
        sends = table("subscriber", "at (UTC)", "their time", title="next sends")
        for send in report.next_sends:
            sends.add_row(safe(send.email), when(send.at), send.local)
        out.print(sends)
    else:
        out.print("next sends: none scheduled")
    if report.queue is not None:
        seen = plural(report.queue["workers_seen"], "worker")
        queue = table("queue", "waiting", "scheduled", "running", "failed", title=f"job queue ({seen} seen in the last minute)")
        for name, counts in sorted(report.queue["queues"].items()):
            queue.add_row(safe(name), *(f"{counts[k]:,}" for k in ("waiting", "scheduled", "running", "failed")))
        out.print(queue)
    for warning in report.warnings:
        out.print(Text("warning: ", style="yellow").append(safe(warning)))


@app.command(rich_help_panel=DAILY)
def preview(
    typer_ctx: typer.Context,
    email: str,
    date: Annotated[str | None, typer.Option(
        help="The issue (their local date, YYYY-MM-DD) as recorded; default: their next digest, scored now.")] = None,
    out_file: Annotated[Path | None, typer.Option("--out", help="Write the HTML here (default: preview-EMAIL-DATE.html).")] = None,
    at: AtOption = None,
) -> None:
    """Write the digest a subscriber would get, as HTML, without sending or recording anything."""
    from newsletter.preview import preview_digest
    from newsletter.runtime import Runtime

    ctx = _ctx(typer_ctx)
    issue_date, now = _parse_date(date), _parse_instant(at)
    path = out_file or Path(f"preview-{email.strip().lower().replace('@', '_at_')}-{issue_date or 'next'}.html")
    if path.is_dir():
        raise NewsletterError(f"--out {path} is a folder: give a file name, e.g. {path / 'preview.html'}")
    if not path.parent.is_dir():
        raise NewsletterError(f"--out {path}: the folder {path.parent} does not exist; create it or choose another path")
    if (path.exists() or path.is_symlink()) and not _an_html_page(path):
        # Run as root, "--out /etc/passwd" replaced the system's file with HTML. A preview replaces a page, not anything.
        raise NewsletterError(f"--out {path} exists and is not an HTML page, so it is not overwritten; choose another path")
    with hint(SUBSCRIBERS_HINT, about="no subscriber "):
        email_out = preview_digest(Runtime.build(ctx.settings, engine=ctx.engine), email=email, issue_date=issue_date, now=now)
    try:
        path.write_text(email_out.html, encoding="utf-8")
    except OSError as exc:
        raise NewsletterError(f"--out {path}: cannot write it ({exc.strerror}); choose another path") from None
    out.print(safe(email_out.subject))
    out.print(Text.assemble(f"{len(email_out.html):,} bytes of HTML written to ", (str(path.resolve()), "bold")))


def _an_html_page(path: Path) -> bool:
    """Whether ``path`` is a regular file that is empty or starts like an HTML page (an earlier preview)."""
    try:
        if not path.is_file() or path.is_symlink():
            return False
        with path.open("rb") as file:
            head = file.read(512).lstrip().lower()
    except OSError:
        return False
    return not head or head.startswith((b"<!doctype html", b"<html"))


def print_picks(picks: list, *, title: str) -> None:  # picks: list[pipeline.Pick]
    """Who gets which papers and why: a table for up to LIST_TABLE_ROWS subscribers, their top three each."""
    if len(picks) > LIST_TABLE_ROWS:
        out.print(f"(the first {LIST_TABLE_ROWS:,} of {len(picks):,} subscribers; --json has them all)")
    table = Table("subscriber", "papers", "top picks (why)", title=title, show_lines=True)
    for pick in picks[:LIST_TABLE_ROWS]:
        top = Text()
        for r in pick.papers[:3]:
            top.append(("\n" if top else "") + safe(shorten(r.paper.title, 70)))
            top.append(f" ({safe(shorten('; '.join(r.reasons), 80))})", style="dim")
        table.add_row(safe(pick.email), str(len(pick.papers)), top or Text("nothing above the threshold", style="dim"))
    out.print(table)


@app.command(rich_help_panel=SERVICES)
def serve(
    typer_ctx: typer.Context,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port to listen on.")] = 8000,
) -> None:
    """Serve the web front: sign-up, confirmation, preferences, unsubscribe (RFC 8058 one-click), the archive and feedback."""
    import socket

    import uvicorn

    from newsletter.web.app import create_app

    ctx = _ctx(typer_ctx)
    try:  # a port in use, a host that is no address of this machine: one line, as `inbound` says it, not uvicorn's log
        with socket.create_server((host, port)):
            pass
    except (OSError, OverflowError) as exc:
        reason = str(getattr(exc, "strerror", None) or exc).split(" (while attempting", 1)[0]
        raise NewsletterError(f"cannot listen on {host}:{port} ({reason}); "
                              "choose another --host or --port") from None
    uvicorn.run(create_app(settings=ctx.settings, sessions=ctx.sessions), host=host, port=port)


@app.command(rich_help_panel=SERVICES)
def inbound(
    typer_ctx: typer.Context,
    host: Annotated[str | None, typer.Option(help="Address to listen on (default: NEWSLETTER_INBOUND_HOST, 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(min=1, max=65535, help="Port to listen on (default: NEWSLETTER_INBOUND_PORT, 8025).")] = None,
) -> None:
    """Receive email commands (subscribe, topics, unsubscribe, help …) over SMTP and answer them by email.

    In production the mail relay forwards the list's own address here.
    """
    from newsletter.inbound import run as run_inbound

    settings = _ctx(typer_ctx).settings
    run_inbound(settings, host=settings.inbound_host if host is None else host,
                port=settings.inbound_port if port is None else port)


@app.command(rich_help_panel=SERVICES)
def worker(
    typer_ctx: typer.Context,
    concurrency: Annotated[int, typer.Option("--concurrency", min=1, help=(
        "Send batches run at once in this process (2: one batch's SMTP round trips overlap the other's "
        "rendering; +28 % for one worker at 100,000 subscribers)."))] = 2,
    queues: Annotated[list[str] | None, typer.Option(
        "--queues", help="Queues to take jobs from (default: all), e.g. send:smtp.example.org:587, ingest.")] = None,
) -> None:
    """Run a worker: take send batches and ingest jobs from PostgreSQL and run them (NEWSLETTER_DISPATCH=procrastinate).

    Needs pip install '.[scale]'. Stops on SIGTERM or Ctrl-C: running batches get 8 s to finish, then what
    they claimed is released for another worker.
    """
    settings = _ctx(typer_ctx).settings
    if not settings.database_url.startswith("postgresql"):
        raise NewsletterError("newsletter worker needs PostgreSQL (NEWSLETTER_DATABASE_URL=postgresql://…) and "
                              "NEWSLETTER_DISPATCH=procrastinate; on SQLite the daemon and `newsletter digest` send themselves")
    try:
        from newsletter.scale.worker import run_worker
    except ImportError:
        raise NewsletterError("the job queue is not installed: pip install -e '.[scale]', then run newsletter init") from None
    raise typer.Exit(run_worker(settings, concurrency=concurrency, queues=queues))


@app.command(rich_help_panel=SERVICES)
def daemon(typer_ctx: typer.Context) -> None:
    """Run the schedule in one process: ingest on a cron, plan and send every minute, retries, a daily cleanup.

    Logs one line per job run to stderr (NEWSLETTER_LOG_FORMAT=json for JSON lines). Stops on SIGTERM or
    Ctrl-C within 10 s: messages in flight finish, the rest is released for the next start.
    """
    from newsletter.daemon import run_daemon

    ctx = _ctx(typer_ctx)
    raise typer.Exit(run_daemon(ctx.settings, engine=ctx.engine))


@app.command(rich_help_panel=START)
def demo(
    folder: Annotated[Path, typer.Option("--dir", help="Where the demo keeps its database and outbox.")] = Path("newsletter-demo"),
) -> None:
    """Run the whole pipeline offline on a bundled sample feed, three sample subscribers and the file backend."""
    from newsletter.demo import run_demo

    if err.is_terminal:  # a spinner with the step it is on; in a log, one line a step
        with err.status("starting…") as status:
            result = run_demo(folder, on_step=status.update)
    else:
        result = run_demo(folder, on_step=lambda step: err.print(f"demo: {step}"))
    print_picks(result.run.picks, title=f"demo digests: {plural(result.papers, 'paper')} ingested")
    out.print(f"{plural(len(result.emails), 'email')} written to {result.outbox}")
    out.print(Text.assemble("open this digest in a browser: ", (str(result.html_path), "bold")))


def main(argv: list[str] | None = None) -> int:
    """Run the CLI and return the exit status; a NewsletterError is printed as one line (status 1)."""
    try:
        app(args=argv, prog_name="newsletter")
    except SystemExit as exc:  # Typer's standalone mode: usage errors, --help, typer.Exit
        return exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 1
    except NewsletterError as exc:
        err.print(f"error: {safe(str(exc))}")
        return 1
    except SQLAlchemyError as exc:  # the database went away or refused mid-command: say so on one line
        err.print(f"error: the database failed: {safe(database_error(exc))}; {database_advice(exc)}")
        return 1
    return 0


def database_advice(exc: BaseException) -> str:
    """What to check: an SQLite file has no server, and "database is locked" means another process holds it."""
    text = str(getattr(exc, "orig", None) or exc)
    if "database is locked" in text:
        return ("another process held the SQLite database's write lock past the busy timeout (30 s): a long "
                "transaction, a sqlite3 shell, a backup; try again when it is done")
    if "readonly database" in text or "unable to open database" in text:
        return "check that NEWSLETTER_DATABASE_URL names a database file this user can write, in a folder it can write"
    return "check NEWSLETTER_DATABASE_URL and that the server is up"


def run() -> None:
    sys.exit(main())
