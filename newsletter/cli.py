"""The ``newsletter`` command. Settings are loaded once here and passed down; errors become one line.

Every command has ``--help``; commands whose output is data take ``--json``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from newsletter import validate
from newsletter.db import migrate, repo
from newsletter.db.engine import make_engine, make_sessionmaker
from newsletter.db.models import utcnow
from newsletter.errors import NewsletterError
from newsletter.records import NewSubscriber, Preferences
from newsletter.settings import Settings, load_settings

app = typer.Typer(help="A self-hosted research-paper digest: ingest → score → render → send.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
sources_app = typer.Typer(help="Manage the feeds papers come from.", no_args_is_help=True)
subscribers_app = typer.Typer(help="Manage subscribers (the admin path: added subscribers are active at once).",
                              no_args_is_help=True)
app.add_typer(sources_app, name="sources")
app.add_typer(subscribers_app, name="subscribers")

out = Console(soft_wrap=True)  # messages stay on one line; tables still fit the terminal
err = Console(stderr=True, soft_wrap=True)  # an error stays on one line, whatever the width

JsonOption = Annotated[bool, typer.Option("--json", help="Print the result as JSON.")]


@dataclass
class Context:
    """What every command gets: the settings, and the database built from them on first use."""

    settings: Settings
    _engine: Engine | None = None

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            self._engine = make_engine(self.settings.database_url)
            _require_schema(self._engine)
        return self._engine

    @property
    def sessions(self) -> sessionmaker[Session]:
        return make_sessionmaker(self.engine)


def _require_schema(engine: Engine) -> None:
    try:
        current = migrate.current_revision(engine)
    except Exception as exc:  # the driver's own error types differ per database
        raise NewsletterError(f"cannot open the database {engine.url!r} ({type(exc).__name__}: {exc}); "
                              "check NEWSLETTER_DATABASE_URL") from None
    if current != migrate.head_revision(engine):
        raise NewsletterError(f"the database {engine.url!r} is not initialised or is out of date: run 'newsletter init'")


def _ctx(typer_ctx: typer.Context) -> Context:
    return typer_ctx.find_root().obj


def _print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n")


@app.callback()
def _root(typer_ctx: typer.Context) -> None:
    typer_ctx.obj = Context(load_settings())


@app.command()
def init(typer_ctx: typer.Context) -> None:
    """Create the database, or migrate it to the latest schema."""
    ctx = _ctx(typer_ctx)
    engine = make_engine(ctx.settings.database_url)
    try:
        migrate.upgrade(engine)
    except Exception as exc:
        raise NewsletterError(f"cannot migrate {engine.url!r} ({type(exc).__name__}: {exc}); check NEWSLETTER_DATABASE_URL") from None
    out.print(f"database ready at {engine.url!r} (schema {migrate.current_revision(engine)})")


# --- ingest --------------------------------------------------------------------------------------


@app.command()
def ingest(
    typer_ctx: typer.Context,
    sources: Annotated[list[str] | None, typer.Argument(
        help="URLs, file paths or shorthands (arxiv:cs.LG, hf-daily); default: the configured sources.")] = None,
    as_json: JsonOption = False,
) -> None:
    """Fetch sources and store their papers (one paper per arXiv id, versions merged)."""
    from newsletter.ingest.fetch import Fetcher, make_client
    from newsletter.ingest.run import ingest_sources
    from newsletter.ingest.sources import SourceSpec, resolve

    ctx = _ctx(typer_ctx)
    settings = ctx.settings
    if sources:
        specs = [resolve(s, hf_daily_url=settings.hf_daily_url) for s in sources]
    else:
        with ctx.sessions() as session:
            specs = [SourceSpec(s.url, s.kind) for s in repo.list_sources(session)]
        specs += [resolve(s, hf_daily_url=settings.hf_daily_url) for s in settings.sources]
    if not specs:
        raise NewsletterError("no sources configured: add one with 'newsletter sources add arxiv:cs.LG' or pass a URL")
    with make_client(timeout_s=settings.fetch_timeout_s, contact_email=settings.contact_email) as client, _progress(as_json) as bar:
        tasks = [bar.add_task(spec.url[:70], total=1, start=False) for spec in specs]

        def done(index: int, report) -> None:
            status = "[red]failed[/red]" if report.error else f"{report.new} new, {report.updated} updated"
            bar.update(tasks[index], completed=1, description=f"{specs[index].url[:70]}  {status}")

        reports = ingest_sources(specs, sessions=ctx.sessions, fetcher=Fetcher.from_settings(settings, client),
                                 now=utcnow(), on_start=lambda index, _spec: bar.start_task(tasks[index]), on_done=done)
    if as_json:
        _print_json([r.as_dict() for r in reports])
    else:
        table = Table("source", "fetched", "new", "updated", "unchanged", "errors", "time", title="ingest")
        for r in reports:
            table.add_row(r.source, str(r.fetched), str(r.new), str(r.updated), str(r.unchanged),
                          f"[red]{r.error}[/red]" if r.error else (r.note or "0"), f"{r.seconds:.2f}s")
        out.print(table)
    failed = [r for r in reports if r.error]
    if failed:
        for r in failed:
            err.print(f"error: {r.error}", markup=False, highlight=False)
        raise typer.Exit(1)


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
    with ctx.sessions() as session:
        repo.add_source(session, url=resolved.url, kind=resolved.kind, name=name or title)
        session.commit()
    out.print(f"added {resolved.kind} source {resolved.url}" + (f" ({title}: {count} papers now)" if title else ""))


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
        _print_json(rows)
        return
    table = Table("id", "kind", "name", "url", "last fetched", "last error", title="sources")
    for r in rows:
        table.add_row(str(r["id"]), str(r["kind"]), str(r["name"] or ""), str(r["url"]), str(r["last_fetched_at"] or "never"),
                      str(r["last_error"] or ""))
    out.print(table)


@sources_app.command("remove")
def sources_remove(typer_ctx: typer.Context, ref: Annotated[str, typer.Argument(help="The source's id or URL.")]) -> None:
    """Remove a source (the papers it brought stay)."""
    from newsletter.ingest.sources import resolve

    ctx = _ctx(typer_ctx)
    with ctx.sessions() as session:
        ref = ref if ref.isdigit() else resolve(ref, hf_daily_url=ctx.settings.hf_daily_url).url
        row = repo.remove_source(session, ref=ref)
        session.commit()
    out.print(f"removed source {row.url}")


# --- subscribers ---------------------------------------------------------------------------------


@subscribers_app.command("add")
def subscribers_add(
    typer_ctx: typer.Context,
    email: str,
    topic: Annotated[list[str] | None, typer.Option("--topic", "-t", help="A topic phrase; repeat for more.")] = None,
    exclude: Annotated[list[str] | None, typer.Option("--exclude", "-x", help="A phrase that rules a paper out.")] = None,
    category: Annotated[list[str] | None, typer.Option("--category", "-c", help="An arXiv category, e.g. cs.LG.")] = None,
    author: Annotated[list[str] | None, typer.Option("--author", "-a", help="An author whose papers always make the digest.")] = None,
    describe: Annotated[str, typer.Option(help="One sentence about the subscriber's work.")] = "",
    timezone: Annotated[str, typer.Option(help="IANA time zone, e.g. Europe/Berlin.")] = "UTC",
    hour: Annotated[int, typer.Option(help="Local hour to send at (0–23).")] = 7,
    frequency: Annotated[str, typer.Option(help="daily or weekly (Mondays).")] = "daily",
    max_papers: Annotated[int | None, typer.Option(help="Papers per digest at most (default: NEWSLETTER_DEFAULT_MAX_PAPERS).")] = None,
    seed: Annotated[list[str] | None, typer.Option("--seed", "-s", help="An arXiv id: more papers like this one.")] = None,
    seed_bibtex: Annotated[Path | None, typer.Option(help="A BibTeX file whose arXiv papers are seeds.")] = None,
    min_score: Annotated[float | None, typer.Option(help="Lowest score to pick a paper (default: NEWSLETTER_MIN_SCORE).")] = None,
) -> None:
    """Add an active subscriber with their interests. A topic may carry a weight: "diffusion models^2"."""
    from newsletter.seeds import arxiv_ids_from_bibtex, normalise_ids

    ctx = _ctx(typer_ctx)
    seeds = normalise_ids(seed or [])
    if seed_bibtex is not None:
        if not seed_bibtex.is_file():
            raise NewsletterError(f"{seed_bibtex}: no such file")
        seeds += arxiv_ids_from_bibtex(seed_bibtex.read_text(encoding="utf-8", errors="replace"))
    new = NewSubscriber(
        email=validate.normalize_email(email),
        preferences=Preferences.from_lists(topics=topic or [], exclude=exclude or [],
                                           categories=[validate.check_category(c) for c in category or []],
                                           authors=author or [], describe=describe, seed_papers=seeds,
                                           min_score=min_score),
        timezone=validate.check_timezone(timezone),
        send_hour=validate.check_hour(hour),
        frequency=validate.check_frequency(frequency),
        max_papers=validate.check_max_papers(max_papers or ctx.settings.default_max_papers),
    )
    with ctx.sessions() as session:
        repo.add_subscriber(session, new=new)
        if new.preferences.seed_papers:
            _fetch_seeds(ctx, session, list(new.preferences.seed_papers))
        session.commit()
    seeds_note = f", {len(new.preferences.seed_papers)} seed papers" if new.preferences.seed_papers else ""
    out.print(f"added {new.email} (active{seeds_note})")


def _fetch_seeds(ctx: Context, session: Session, ids: list[str]) -> None:
    from newsletter.ingest.fetch import Fetcher, make_client
    from newsletter.seeds import ensure_seed_papers

    with make_client(timeout_s=ctx.settings.fetch_timeout_s, contact_email=ctx.settings.contact_email) as client:
        missing = ensure_seed_papers(session, ids=ids, fetcher=Fetcher.from_settings(ctx.settings, client),
                                     api_url=ctx.settings.arxiv_api_url)
    if missing:
        raise NewsletterError(f"arXiv does not know the seed paper(s) {', '.join(missing)}: check the ids")


@app.command()
def feedback(
    typer_ctx: typer.Context,
    email: str,
    paper: Annotated[str, typer.Argument(help="The paper's arXiv id (or key).")],
    direction: Annotated[str, typer.Argument(help="up (more like this) or down (less like this).")],
) -> None:
    """Record "more like this" / "less like this" for a subscriber; their next digest follows it."""
    if direction not in ("up", "down"):
        raise NewsletterError(f"{direction!r}: say up (more like this) or down (less like this)")
    with _ctx(typer_ctx).sessions() as session:
        subscriber = repo.get_subscriber(session, email=email)
        row = repo.get_paper(session, ref=paper)
        repo.record_feedback(session, subscriber_id=subscriber.id, paper_id=row.id, value=1 if direction == "up" else -1)
        session.commit()
        title = row.title
    out.print(f"noted: {'more' if direction == 'up' else 'fewer'} papers like “{title}” for {email.strip().lower()}")


@subscribers_app.command("list")
def subscribers_list(
    typer_ctx: typer.Context,
    status: Annotated[str | None, typer.Option(help="Only this status: pending, active, paused, unsubscribed.")] = None,
    as_json: JsonOption = False,
) -> None:
    """List subscribers."""
    with _ctx(typer_ctx).sessions() as session:
        rows = [repo.subscriber_view(s) for s in repo.list_subscribers(session, status=status)]
    if as_json:
        _print_json(rows)
        return
    table = Table("email", "status", "topics", "categories", "time zone", "hour", "max", title=f"{len(rows)} subscribers")
    for r in rows:
        table.add_row(r["email"], r["status"], "; ".join(r["topics"]), " ".join(r["categories"]), r["timezone"],
                      str(r["send_hour"]), str(r["max_papers"]))
    out.print(table)


@subscribers_app.command("show")
def subscribers_show(typer_ctx: typer.Context, email: str, as_json: JsonOption = False) -> None:
    """Show a subscriber's status and all preferences."""
    with _ctx(typer_ctx).sessions() as session:
        view = repo.subscriber_view(repo.get_subscriber(session, email=email))
    if as_json:
        _print_json(view)
        return
    table = Table("field", "value", show_header=False, title=view["email"])
    for key, value in view.items():
        table.add_row(key, "; ".join(value) if isinstance(value, list) else str(value))
    out.print(table)


@subscribers_app.command("remove")
def subscribers_remove(typer_ctx: typer.Context, email: str) -> None:
    """Delete a subscriber with their preferences and delivery history."""
    with _ctx(typer_ctx).sessions() as session:
        repo.remove_subscriber(session, email=email)
        session.commit()
    out.print(f"removed {email.strip().lower()}")


@subscribers_app.command("import")
def subscribers_import(
    typer_ctx: typer.Context,
    file: Annotated[Path, typer.Argument(help="A CSV file with a header row; see the README for the columns.")],
    skip_invalid: Annotated[bool, typer.Option(help="Import the valid rows even if some are invalid.")] = False,
    as_json: JsonOption = False,
) -> None:
    """Import subscribers from CSV; all-or-nothing unless --skip-invalid."""
    from newsletter.subscribers_csv import read_subscribers_csv

    ctx = _ctx(typer_ctx)
    if not file.is_file():
        raise NewsletterError(f"{file}: no such file")
    with file.open(newline="", encoding="utf-8-sig") as handle:
        parsed = read_subscribers_csv(handle, default_max_papers=ctx.settings.default_max_papers)
    with ctx.sessions() as session:
        parsed.reject_existing(repo.existing_emails(session, emails=parsed.lines))
        imported = 0
        if parsed.subscribers and (skip_invalid or not parsed.errors):
            imported = repo.import_subscribers(session, subscribers=parsed.subscribers)
            session.commit()
    if as_json:
        _print_json({"imported": imported, "errors": parsed.errors})
    else:
        for line in parsed.errors[:50]:
            err.print(line, markup=False, highlight=False)
        if len(parsed.errors) > 50:
            err.print(f"... and {len(parsed.errors) - 50} more invalid rows")
        out.print(f"imported {imported} subscribers from {file}")
    if parsed.errors and not skip_invalid:
        raise NewsletterError(f"{file}: {len(parsed.errors)} invalid rows, nothing imported; fix them or pass --skip-invalid")


# --- digest --------------------------------------------------------------------------------------


def _parse_date(value: str | None) -> dt.date:
    if value is None:
        return dt.datetime.now(dt.UTC).date()
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise NewsletterError(f"--date {value!r} is not a date: use YYYY-MM-DD") from None


@app.command()
def digest(
    typer_ctx: typer.Context,
    date: Annotated[str | None, typer.Option(help="Issue date, YYYY-MM-DD (default: today, UTC).")] = None,
    dry_run: Annotated[bool, typer.Option(help="Score only: record and send nothing.")] = False,
    only: Annotated[str | None, typer.Option(help="Only this subscriber's digest.")] = None,
    as_json: JsonOption = False,
) -> None:
    """Score, render and send the day's digests; each subscriber gets at most one per day."""
    from newsletter.pipeline import run_digest
    from newsletter.render.digest import make_environment
    from newsletter.send.mailer import RecordingMailer, mailer_factory

    ctx = _ctx(typer_ctx)
    issue_date = _parse_date(date)
    connect = RecordingMailer if dry_run else mailer_factory(ctx.settings)
    with _progress(as_json) as bar:
        task = bar.add_task("sending", total=None)
        run = asyncio.run(run_digest(
            settings=ctx.settings, sessions=ctx.sessions, connect=connect, templates=make_environment(),
            issue_date=issue_date, only=only, dry_run=dry_run,
            progress=lambda done, _total: bar.update(task, completed=done),
        ))
    if as_json:
        data: Any = [{"email": p.email, "papers": [
            {"arxiv_id": r.paper.arxiv_id, "key": r.paper.key, "title": r.paper.title, "score": round(r.score, 4),
             "reasons": list(r.reasons)} for r in p.papers]} for p in run.picks]
        _print_json(data if dry_run else {"issue_date": issue_date, "picks": data, "outcomes": dict(run.outcomes)})
    else:
        print_picks(run.picks, title=f"digest {issue_date} ({run.candidates} candidate papers)")
        if not dry_run:
            out.print("deliveries: " + (", ".join(f"{k} {v}" for k, v in sorted(run.outcomes.items())) or "nothing to send"))
    for message in run.errors:
        err.print(f"error: {message}", markup=False, highlight=False)
    if run.errors:
        raise typer.Exit(1)


@app.command()
def preview(
    typer_ctx: typer.Context,
    email: str,
    date: Annotated[str | None, typer.Option(help="Issue date, YYYY-MM-DD (default: today, UTC).")] = None,
    out_file: Annotated[Path | None, typer.Option("--out", help="Write the HTML here (default: preview-EMAIL-DATE.html).")] = None,
) -> None:
    """Write the digest a subscriber would get, as HTML, without sending or recording anything."""
    from newsletter.preview import preview_digest
    from newsletter.render.digest import make_environment

    ctx = _ctx(typer_ctx)
    issue_date = _parse_date(date)
    email_out = preview_digest(settings=ctx.settings, sessions=ctx.sessions, templates=make_environment(),
                               email=email, issue_date=issue_date)
    path = out_file or Path(f"preview-{email.strip().lower().replace('@', '_at_')}-{issue_date}.html")
    path.write_text(email_out.html, encoding="utf-8")
    out.print(f"{email_out.subject}\n{len(email_out.html):,} bytes of HTML written to [bold]{path.resolve()}[/bold]")


def print_picks(picks: list, *, title: str) -> None:
    table = Table("subscriber", "papers", "top picks (why)", title=title, show_lines=True)
    for pick in picks:
        top = "\n".join(f"{r.paper.title[:70]} [dim]({'; '.join(r.reasons)[:80]})[/dim]" for r in pick.papers[:3])
        table.add_row(pick.email, str(len(pick.papers)), top or "[dim]nothing above the threshold[/dim]")
    out.print(table)


@app.command()
def serve(
    typer_ctx: typer.Context,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
) -> None:
    """Serve the pages behind the links in emails (for now: "more / less like this")."""
    import uvicorn

    from newsletter.web.app import create_app

    ctx = _ctx(typer_ctx)
    uvicorn.run(create_app(settings=ctx.settings, sessions=ctx.sessions), host=host, port=port)


@app.command()
def demo(
    folder: Annotated[Path, typer.Option("--dir", help="Where the demo keeps its database and outbox.")] = Path("newsletter-demo"),
) -> None:
    """Run the whole pipeline offline on a bundled sample feed, three sample subscribers and the file backend."""
    from newsletter.demo import run_demo

    result = run_demo(folder)
    print_picks(result.run.picks, title=f"demo digest {result.run.issue_date}: {result.papers} papers ingested")
    out.print(f"{len(result.emails)} emails written to {result.outbox}")
    out.print(f"open this digest in a browser: [bold]{result.html_path}[/bold]")


def main(argv: list[str] | None = None) -> int:
    """Run the CLI and return the exit status; a NewsletterError is printed as one line (status 1)."""
    try:
        app(args=argv, prog_name="newsletter")
    except SystemExit as exc:  # Typer's standalone mode: usage errors, --help, typer.Exit
        return exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 1
    except NewsletterError as exc:
        err.print(f"error: {exc}", markup=False, highlight=False, soft_wrap=True)
        return 1
    return 0


def run() -> None:
    sys.exit(main())
