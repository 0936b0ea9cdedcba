"""The admin CLI: subscriber management, CSV import, and one clear line for every kind of bad input."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
from pathlib import Path

import pytest
from sqlalchemy import func, select

from newsletter.db.engine import make_engine, make_sessionmaker
from newsletter.db.models import Delivery, Paper, Source, Subscriber
from tests.conftest import FIXTURES, fixed_send_moment, free_port


def counts(database_url: str) -> dict[str, int]:
    engine = make_engine(database_url)
    with make_sessionmaker(engine)() as session:
        result = {model.__tablename__: session.scalar(select(func.count()).select_from(model)) or 0
                  for model in (Subscriber, Paper, Source, Delivery)}
    engine.dispose()
    return result


@pytest.fixture
def ready(cli, configured) -> str:
    assert cli("init").code == 0
    return configured


def test_every_command_has_help(cli) -> None:
    for command in (["--help"], ["init", "--help"], ["ingest", "--help"], ["digest", "--help"], ["demo", "--help"],
                    ["sources", "add", "--help"], ["sources", "list", "--help"], ["sources", "remove", "--help"],
                    ["subscribers", "add", "--help"], ["subscribers", "list", "--help"], ["subscribers", "show", "--help"],
                    ["subscribers", "remove", "--help"], ["subscribers", "import", "--help"],
                    ["subscribers", "update", "--help"], ["subscribers", "export", "--help"], ["subscribers", "pause", "--help"],
                    ["subscribers", "resume", "--help"], ["subscribers", "forget", "--help"], ["stats", "--help"],
                    ["inbound", "--help"]):
        result = cli(*command)
        assert result.code == 0 and "Usage" in result.out, command


def test_the_command_list_is_grouped_by_when_a_user_needs_it(cli) -> None:
    page = cli("--help").out
    rows = {re.search(rf"^\W*{re.escape(name)}\b", page, re.MULTILINE) for name in ("subscribers", "sources", "digest", "daemon")}
    places = {m.group().strip(" │|"): m.start() for m in rows if m is not None}
    places |= {name: page.index(name) for name in ("Set up", "Daily work", "Services (long-running)")}
    assert places["Set up"] < places["sources"] < places["Daily work"] < places["digest"] < places["Services (long-running)"]
    assert places["subscribers"] < places["Daily work"] and places["Services (long-running)"] < places["daemon"]


def test_add_show_list_remove_a_subscriber(cli, ready) -> None:
    added = cli("subscribers", "add", "Ada.Lovelace@Example.ORG", "--topic", "diffusion models", "--topic", "sampling",
                "--exclude", "video", "--category", "cs.CV", "--author", "Yann LeCun",
                "--describe", "I make image generators faster.", "--timezone", "Europe/Berlin", "--hour", "6",
                "--max-papers", "8")
    assert added.code == 0, added.err
    shown = json.loads(cli("subscribers", "show", "ada.lovelace@example.org", "--json").out)
    assert shown == shown | {
        "email": "ada.lovelace@example.org", "status": "active", "timezone": "Europe/Berlin", "send_hour": 6,
        "max_papers": 8, "topics": ["diffusion models", "sampling"], "exclude": ["video"], "categories": ["cs.CV"],
        "authors": ["Yann LeCun"], "describe": "I make image generators faster.", "frequency": "daily",
    }
    listed = json.loads(cli("subscribers", "list", "--json").out)
    assert [s["email"] for s in listed] == ["ada.lovelace@example.org"]
    duplicate = cli("subscribers", "add", "ADA.LOVELACE@example.org")
    assert duplicate.code == 1 and "already a subscriber" in duplicate.err
    assert "'newsletter subscribers show ada.lovelace@example.org' shows it" in duplicate.err
    assert cli("subscribers", "remove", "Ada.Lovelace@example.org", "--yes").code == 0
    assert json.loads(cli("subscribers", "list", "--json").out) == []


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["subscribers", "add", "not-an-address"], "invalid email address 'not-an-address'"),
        (["subscribers", "add", "a" * 65 + "@example.org"], "the part before the @ is longer than 64 bytes"),
        (["subscribers", "add", "nul\x00@example.org"], "contains invalid characters before the @-sign: U+0000"),
        (["subscribers", "add", "a@example.org", "--timezone", "Mars/Olympus"], "unknown time zone 'Mars/Olympus'"),
        (["subscribers", "add", "a@example.org", "--hour", "25"], "send hour 25 is out of range"),
        (["subscribers", "add", "a@example.org", "--timezone", "localtime"], "unknown time zone 'localtime'"),  # the server's
        (["subscribers", "add", "a@example.org", "--timezone", "Factory"], "unknown time zone 'Factory'"),
        (["subscribers", "add", "a@example.org", "--category", "machine learning"], "is not an arXiv category"),
        (["subscribers", "list", "--status", "bogus"], "--status 'bogus' is not a subscriber status: use pending, active"),
        (["subscribers", "show", "ghost@example.org"], "no subscriber 'ghost@example.org'; 'newsletter subscribers list'"),
        (["subscribers", "remove", "ghost@example.org"], "no subscriber 'ghost@example.org'; 'newsletter subscribers list'"),
        (["digest", "--only", "ghost@example.org"], "no subscriber 'ghost@example.org'; 'newsletter subscribers list'"),
        (["digest", "--at", "28/11/2026"], "is not an instant: use e.g. 2026-12-01T06:00:00Z"),
        (["preview", "kept@example.org", "--date", "28/11/2026"], "is not a date: use YYYY-MM-DD"),
        # A mistyped year on a real run would record every digest until then as missed: refused, nothing written.
        (["digest", "--at", "2062-12-01T06:00:00Z"], "is in the future: a real run then would record every digest"),
        (["digest", "--at", "9999-12-31T23:59:59Z"], "is out of range: years 1971–2998"),
        (["digest", "--dry-run", "--at", "0001-01-01T00:00:00Z"], "is out of range: years 1971–2998"),
        (["preview", "kept@example.org", "--date", "9999-12-31"], "is out of range: years 1971–2998"),
        (["preview", "kept@example.org", "--at", "9999-12-31T00:00:00Z"], "is out of range: years 1971–2998"),
        (["sources", "remove", "42"], "no source '42'; 'newsletter sources list' shows the configured ones"),
        (["feedback", "kept@example.org", "2611.99999", "up"], "no paper '2611.99999' has been ingested; ingest it first"),
        (["ingest"], "no sources configured"),
        (["ingest", "/nowhere/feed.xml"], "/nowhere/feed.xml: no such file"),
        (["ingest", "/dev/zero"], "/dev/zero is not a regular file (a device or a pipe)"),  # it used to say "no such file"
        (["ingest", "/"], "/ is a folder: give the path of a feed file in it"),
    ],
)
def test_bad_input_is_one_line_names_the_thing_and_changes_nothing(cli, ready, args, expected) -> None:
    cli("subscribers", "add", "kept@example.org", "--topic", "graphs")
    before = counts(ready)
    result = cli(*args)
    assert result.code != 0
    assert expected in result.err
    assert result.err.strip().count("\n") == 0 or args[0] == "ingest", result.err
    assert "Traceback" not in result.err
    assert counts(ready) == before


def test_a_page_that_is_not_a_feed_is_refused_by_name(cli, ready, httpserver) -> None:
    httpserver.expect_request("/blog").respond_with_data("<!DOCTYPE html><html><body>Hello</body></html>",
                                                         content_type="text/html")
    url = httpserver.url_for("/blog")
    before = counts(ready)
    added = cli("sources", "add", url)
    assert added.code == 1 and f"{url}: not a feed, it is an HTML page" in added.err
    ingested = cli("ingest", url)
    assert ingested.code == 1 and f"{url}: not a feed" in ingested.err
    assert counts(ready) == before


def test_unreachable_smtp_relay_is_reported_and_nothing_is_recorded(cli, env, ready) -> None:
    port = free_port()  # nothing listens there
    env(email_backend="smtp", smtp_host="127.0.0.1", smtp_port=port, smtp_security="none")
    cli("subscribers", "add", "ada@example.org", "--topic", "diffusion models")
    cli("ingest", str(FIXTURES / "arxiv_cs_lg.rss"))
    before = counts(ready)
    result = cli("digest")
    assert result.code == 1
    assert f"cannot reach SMTP relay 127.0.0.1:{port}" in result.err and "NEWSLETTER_SMTP_HOST" in result.err
    assert counts(ready) == before


def test_an_idle_digest_run_leaves_a_dead_relay_alone_and_the_first_run_with_something_due_reports_it(cli, env, ready) -> None:
    port = free_port()  # nothing listens there
    env(email_backend="smtp", smtp_host="127.0.0.1", smtp_port=port, smtp_security="none")
    cli("subscribers", "add", "ada@example.org", "--topic", "diffusion models")
    cli("ingest", str(FIXTURES / "arxiv_cs_lg.rss"))
    due_at = dt.datetime.fromisoformat(fixed_send_moment(os.environ["NEWSLETTER_DATABASE_URL"]))
    idle = cli("digest", "--allow-future", "--at", (due_at - dt.timedelta(hours=2)).isoformat())
    assert idle.code == 0, idle.err  # from cron every few minutes: no error line on every idle run
    assert "cannot reach" not in idle.err and "nothing to send" in idle.out
    due = cli("digest")
    assert due.code == 1 and f"cannot reach SMTP relay 127.0.0.1:{port}" in due.err


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({"email_backend": "smtp"}, "NEWSLETTER_SMTP_HOST is not set"),
        ({"secret_key": ""}, "NEWSLETTER_SECRET_KEY is not set"),
        ({"from_address": ""}, "NEWSLETTER_FROM_ADDRESS is not set"),
        ({"smtp_port": "seventy"}, "NEWSLETTER_SMTP_PORT is invalid"),
        ({"email_backend": "pigeon"}, "NEWSLETTER_EMAIL_BACKEND is invalid"),
        ({"database_url": "mysql://x"}, "NEWSLETTER_DATABASE_URL is invalid"),
    ],
)
def test_a_missing_or_invalid_setting_is_named(cli, env, ready, settings, expected) -> None:
    cli("subscribers", "add", "ada@example.org", "--topic", "diffusion models")
    cli("ingest", str(FIXTURES / "arxiv_cs_lg.rss"))
    env(**settings)
    result = cli("digest")
    assert result.code == 1 and expected in result.err
    env(email_backend="file", secret_key="test-secret-key-0123456789abcdefghij", from_address="d@example.org", smtp_port=25,
        database_url=ready)
    assert counts(ready)["deliveries"] == 0


def test_commands_refuse_an_uninitialised_database(cli, env, tmp_path) -> None:
    env(database_url=f"sqlite:///{tmp_path / 'fresh.db'}")
    result = cli("subscribers", "list")
    assert result.code == 1 and "run 'newsletter init'" in result.err


def test_sources_add_list_remove_with_arxiv_shorthand(cli, ready, httpserver) -> None:
    added = cli("sources", "add", "arxiv:cs.AI+cs.LG", "--no-check")
    assert added.code == 0
    [source] = json.loads(cli("sources", "list", "--json").out)
    assert (source["url"], source["kind"]) == ("https://rss.arxiv.org/rss/cs.AI+cs.LG", "arxiv-rss")
    assert cli("sources", "remove", "arxiv:cs.AI+cs.LG").code == 0
    assert json.loads(cli("sources", "list", "--json").out) == []


# --- CSV import ----------------------------------------------------------------------------------

HEADER = "email,topics,exclude,categories,authors,describe,timezone,hour,frequency,max_papers\n"


def write_csv(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "subscribers.csv"
    path.write_text(HEADER + body, encoding="utf-8")
    return path


def test_import_reads_every_column(cli, ready, tmp_path) -> None:
    path = write_csv(tmp_path, 'ada@example.org,diffusion models;sampling,video,cs.CV;cs.LG,Yann LeCun,"I make images, fast.",'
                               "Europe/Berlin,6,weekly,7\nbob@example.org,graphs,,,,,,,,\n")
    result = cli("subscribers", "import", str(path), "--json")
    assert result.code == 0, result.err
    assert json.loads(result.out) == {"imported": 2, "errors": [], "skipped": []}
    ada = json.loads(cli("subscribers", "show", "ada@example.org", "--json").out)
    assert ada == ada | {"topics": ["diffusion models", "sampling"], "exclude": ["video"], "categories": ["cs.CV", "cs.LG"],
                         "authors": ["Yann LeCun"], "describe": "I make images, fast.", "timezone": "Europe/Berlin",
                         "send_hour": 6, "frequency": "weekly", "max_papers": 7, "status": "active"}
    bob = json.loads(cli("subscribers", "show", "bob@example.org", "--json").out)
    assert (bob["timezone"], bob["send_hour"], bob["frequency"], bob["max_papers"]) == ("UTC", 7, "daily", 10)


def test_import_reports_invalid_rows_by_line_and_imports_nothing(cli, ready, tmp_path) -> None:
    cli("subscribers", "add", "old@example.org")
    path = write_csv(tmp_path, "good@example.org,graphs,,,,,,,,\n"
                               "broken-address,graphs,,,,,,,,\n"
                               "tz@example.org,,,,,,Nowhere/City,,,\n"
                               "GOOD@example.org,,,,,,,,,\n"
                               "old@example.org,,,,,,,,,\n"
                               "hour@example.org,,,,,,,noon,,\n")
    result = cli("subscribers", "import", str(path))
    assert result.code == 1
    for expected in ("line 3: invalid email address 'broken-address'", "line 4: unknown time zone 'Nowhere/City'",
                     "line 5: good@example.org already appears on line 2", "line 6: old@example.org is already a subscriber",
                     "line 7: hour 'noon' is not a whole number", "5 invalid rows, nothing imported"):
        assert expected in result.err
    assert "imported" not in result.out  # "nothing imported" is said once, by the error
    assert [s["email"] for s in json.loads(cli("subscribers", "list", "--json").out)] == ["old@example.org"]

    skipped = cli("subscribers", "import", str(path), "--skip-invalid")
    assert skipped.code == 0 and "imported 1 subscriber from" in skipped.out and "(5 invalid rows left out)" in skipped.out
    emails = [s["email"] for s in json.loads(cli("subscribers", "list", "--json").out)]
    assert emails == ["good@example.org", "old@example.org"]


def test_import_without_an_email_column_is_refused(cli, ready, tmp_path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("address,topics\na@example.org,graphs\n")
    result = cli("subscribers", "import", str(path))
    assert result.code == 1 and "no 'email' column" in result.err


def test_import_of_many_rows_uses_bulk_inserts(cli, ready, tmp_path) -> None:
    rows = "".join(f"user{i}@example.org,topic {i % 50};graphs,,cs.LG,,,,,,\n" for i in range(5000))
    result = cli("subscribers", "import", str(write_csv(tmp_path, rows)), "--json")
    assert json.loads(result.out)["imported"] == 5000
    assert counts(ready)["subscribers"] == 5000


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["subscribers", "add", "a@example.org", "--max-papers", "0"], "max papers 0 is out of range: use 1 to 100"),
        (["subscribers", "add", "a@example.org", "--max-papers", "101"], "max papers 101 is out of range"),
        (["subscribers", "add", "a@example.org", "--min-score", "-100"], "minimum score -100 is out of range"),
        (["preview", "kept@example.org", "--out", "/missing-dir/x.html"], "the folder /missing-dir does not exist"),
        (["preview", "kept@example.org", "--out", "/tmp"], "--out /tmp is a folder"),
    ],
)
def test_more_bad_input_is_one_line_and_changes_nothing(cli, ready, args, expected) -> None:
    test_bad_input_is_one_line_names_the_thing_and_changes_nothing(cli, ready, args, expected)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"email,topics\na@example.org," + b"x" * 1_000_000 + b"\n", "line 2: not valid CSV (field larger than"),
        (b"email,topics\na@example.org," + b"x" * 1_000_000 + b"\n", "fields hold 10,000 characters at most"),
        (b"email,email,topics\na@example.org,b@example.org,graphs\n", "line 1: the header names 'email' more than once"),
        ("email,describe\njürgen@example.org,Ich erforsche Graphen\n".encode("latin-1"), "not UTF-8 text"),
        ("email,describe\na@example.org,graphs\n".encode("utf-16"), "re-save it as CSV UTF-8"),
        (b"address,topics\na@example.org,graphs\n", "the header row has no 'email' column (it has 'address', 'topics';"),
        (b"", "the file is empty; the first line names the columns"),
        (b"\nemail\na@example.org\n", "line 1 is blank; the first line names the columns"),
    ],
)
def test_a_broken_csv_is_refused_in_one_line(cli, ready, tmp_path, content, expected) -> None:
    file = tmp_path / "people.csv"
    file.write_bytes(content)
    before = counts(ready)
    for extra in ([], ["--skip-invalid"]):  # a broken file is an error even when invalid rows may be skipped
        result = cli("subscribers", "import", str(file), *extra)
        assert result.code == 1, result.out
        assert expected in result.err and "Traceback" not in result.err
        assert result.err.strip().count("\n") == 0, result.err
    assert counts(ready) == before


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b'[{"email": "a@example.org", "topics": ["x"], "hour": ' + b"9" * 5_000 + b"}]", "holds a number too long to read"),
        ('[{"email": "jürgen@example.org", "topics": ["Graphen"]}]'.encode("latin-1"), "re-save it as UTF-8 and"),
    ],
)
def test_a_broken_json_file_is_refused_in_one_line(cli, ready, tmp_path, content, expected) -> None:
    file = tmp_path / "people.json"
    file.write_bytes(content)
    before = counts(ready)
    result = cli("subscribers", "import", str(file))
    assert result.code == 1 and expected in result.err and "CSV" not in result.err and "Traceback" not in result.err
    assert result.err.strip().count("\n") == 0, result.err
    assert counts(ready) == before


def test_every_problem_of_a_csv_row_is_reported_with_plurals(cli, ready, tmp_path) -> None:
    file = tmp_path / "people.csv"
    file.write_text("email,timezone,hour,max_papers,describe\nnot-an-address,Mars/Olympus,25,0,\nok@example.org,UTC,7,5,\n"
                    "long@example.org,UTC,7,5," + "y" * 20_000 + "\n")
    result = cli("subscribers", "import", str(file))
    assert result.code == 1
    assert "line 4: describe longer than 10,000 characters" in result.err
    line = next(x for x in result.err.splitlines() if x.startswith("line 2:"))
    for problem in ("invalid email address", "unknown time zone 'Mars/Olympus'", "send hour 25", "max papers 0"):
        assert problem in line
    assert "2 invalid rows, nothing imported" in result.err
    skipped = cli("subscribers", "import", str(file), "--skip-invalid")
    assert skipped.code == 0 and "imported 1 subscriber from" in skipped.out and "(2 invalid rows left out)" in skipped.out


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({"database_url": "sqlite//x.db"}, "NEWSLETTER_DATABASE_URL is invalid: 'sqlite//x.db' is not a database URL"),
        ({"database_url": "postgresql://u:hunter2@db.example.org:abc/x"}, "has an invalid port"),
        ({"from_address": "not-an-address"}, "NEWSLETTER_FROM_ADDRESS is invalid: 'not-an-address' is not an email address"),
        ({"secret_key": "x"}, "NEWSLETTER_SECRET_KEY is invalid: must be at least 32 characters"),
        ({"sources": "[not json"}, "NEWSLETTER_SOURCES is invalid: not JSON"),
        ({"log_level": "LOUD"}, "NEWSLETTER_LOG_LEVEL is invalid: 'LOUD' is not a log level"),
        ({"trending_weight": "inf"}, "NEWSLETTER_TRENDING_WEIGHT is invalid"),
        ({"min_score": "nan"}, "NEWSLETTER_MIN_SCORE is invalid"),
        ({"base_url": "javascript:alert(1)"}, "NEWSLETTER_BASE_URL is invalid: 'javascript:alert(1)' is not an http(s) address"),
        ({"base_url": "ftp://x"}, "NEWSLETTER_BASE_URL is invalid"),
        # a line break in a value that goes into headers: every notice failed at its send
        ({"list_name": "Digest\r\nBcc: x@y.org"}, "NEWSLETTER_LIST_NAME is invalid: 'Digest\\r\\nBcc: x@y.org' contains a line"),
        ({"contact_email": "me@example.org\nX-Evil: 1"}, "NEWSLETTER_CONTACT_EMAIL is invalid"),
        # durations no clock can hold: the web front crashed at start, a run at its first lease
        ({"feedback_link_days": "1000000000000"}, "NEWSLETTER_FEEDBACK_LINK_DAYS is invalid: Input should be less than or equal to 3650"),
        ({"lease_s": "1e300"}, "NEWSLETTER_LEASE_S is invalid"),
        ({"retry_window_h": "1e300"}, "NEWSLETTER_RETRY_WINDOW_H is invalid"),
        ({"confirm_link_hours": "1e300"}, "NEWSLETTER_CONFIRM_LINK_HOURS is invalid"),
    ],
)
def test_invalid_settings_are_one_line_and_hide_passwords(cli, env, ready, settings, expected) -> None:
    env(**settings)
    result = cli("subscribers", "list")
    assert result.code == 1 and expected in result.err, result.err
    assert result.err.strip().count("\n") == 0 and "Traceback" not in result.err
    assert "hunter2" not in result.err


def test_an_unreachable_postgres_is_one_line_without_the_password_or_a_link(cli, env) -> None:
    env(database_url=f"postgresql://digest:hunter2@127.0.0.1:{free_port()}/x?password=hunter3&connect_timeout=3")
    result = cli("subscribers", "list")
    assert result.code == 1 and "cannot open the database" in result.err
    assert result.err.strip().count("\n") == 0 and "Traceback" not in result.err
    assert "hunter2" not in result.err and "hunter3" not in result.err and "sqlalche.me" not in result.err


def test_two_runs_recording_the_same_day_never_fail_or_double(ready) -> None:
    import datetime as dt

    from newsletter.db import ledger, repo

    engine = make_engine(ready)
    sessions = make_sessionmaker(engine)
    with sessions() as session:
        for i in range(3):
            session.add(Subscriber(email=f"s{i}@example.org", status="active"))
        session.commit()
        ids = [s.id for s in repo.list_subscribers(session)]
    day = dt.date(2026, 11, 30)
    with sessions() as first, sessions() as second:  # both planned before either recorded, as two racing runs do
        now = dt.datetime(2026, 11, 30, 7)
        assert ledger.record_deliveries(first, message_domain="example.org", now=now,
                                        planned=[ledger.PlannedDelivery(i, day, [], "pending") for i in ids[:2]]) == {
            (i, day) for i in ids[:2]}
        first.commit()
        assert ledger.record_deliveries(second, message_domain="example.org", now=now,
                                        planned=[ledger.PlannedDelivery(i, day, [], "pending") for i in ids]) == {(ids[2], day)}
        second.commit()
    assert counts(ready)["deliveries"] == 3
    engine.dispose()


def test_a_first_digest_run_with_nobody_due_says_when_the_next_one_is_and_how_to_see_one_now(cli, configured) -> None:
    cli("init")
    cli("subscribers", "add", "ada@example.org", "--topic", "graphs", "--hour", "7", "--timezone", "UTC")
    at = dt.datetime.now(dt.UTC).replace(second=0, microsecond=0)
    ran = cli("digest", "--at", at.isoformat())  # a new subscriber's first digest is at their next 07:00
    assert ran.code == 0, ran.err
    # The moment asked about, not "now" (with --at, "now" was another moment)
    assert re.search(rf"nobody is due at {at:%Y-%m-%d %H:%M} UTC; the next digest is due at \d{{4}}-\d{{2}}-\d{{2}} 07:00 UTC",
                     ran.out), ran.out
    assert "'digest --only EMAIL' sends one now" in ran.out


def test_a_digest_with_no_papers_at_all_says_to_ingest_some(cli, configured) -> None:
    cli("init")
    nobody = cli("digest", "--dry-run")
    assert nobody.code == 0 and "newsletter ingest" not in nobody.out  # no subscriber: papers are not what is missing
    cli("subscribers", "add", "ada@example.org", "--topic", "graphs")
    dry = cli("digest", "--dry-run")
    assert dry.code == 0, dry.err
    assert "scored against 0 candidate papers" in dry.out and "'newsletter ingest' fetches them" in dry.out


def test_a_command_on_a_database_that_is_not_there_leaves_no_empty_file_behind(cli, env, tmp_path) -> None:
    missing = tmp_path / "typo.db"
    env(database_url=f"sqlite:///{missing}")
    listed = cli("subscribers", "list")
    assert listed.code == 1 and "not initialised" in listed.err and "newsletter init" in listed.err
    assert not list(tmp_path.glob("typo.db*")), "SQLite would make the file by opening it: the command must not open it"
    kept = tmp_path / "someone-elses.db"
    kept.write_bytes(b"")  # a file that was there before is never removed, whatever it holds
    env(database_url=f"sqlite:///{kept}")
    assert cli("subscribers", "list").code == 1 and kept.exists()


def test_tables_into_a_pipe_or_a_log_are_wide_enough_for_an_address(cli, configured) -> None:
    cli("init")
    address = "a.rather.long.address.for.a.table@departments.example.org"
    cli("subscribers", "add", address, "--topic", "graph neural networks for molecules")
    listed = cli("subscribers", "list")
    assert listed.code == 0 and address in listed.out, listed.out


def test_sending_one_subscribers_digest_again_says_it_went_already(cli, configured) -> None:
    cli("init")
    cli("ingest", str(FIXTURES / "arxiv_cs_lg.rss"))  # first seen now: tomorrow's digest can pick them
    cli("subscribers", "add", "ada@example.org", "--topic", "sequential recommendation", "--timezone", "UTC")
    tomorrow = (dt.datetime.now(dt.UTC) + dt.timedelta(days=1)).replace(hour=12, minute=0, second=0, microsecond=0)
    first = cli("digest", "--allow-future", "--only", "ada@example.org", "--at", tomorrow.isoformat())
    assert first.code == 0 and "sent 1" in first.out, first.out + first.err
    again = cli("digest", "--allow-future", "--only", "ada@example.org", "--at", (tomorrow + dt.timedelta(hours=3)).isoformat())
    assert again.code == 0, again.err
    assert f"ada@example.org: their digest of {tomorrow.date()} (their local date) went out already; at most one a day" in again.out
    assert "digests at" not in again.out, "no empty table of picks above it"


def test_a_sources_password_reaches_no_json_either(cli, ready) -> None:
    """The tables masked it; `sources list --json`, `status --json` and `ingest --json` printed it."""
    url = f"http://reader:hunter2@127.0.0.1:{free_port()}/feed.rss"
    assert cli("sources", "add", url, "--name", "private", "--no-check").code == 0
    failed = cli("ingest", "--json")
    for result in (cli("sources", "list", "--json"), cli("status", "--json"), failed):
        assert "hunter2" not in result.out and "hunter2" not in result.err, result.out
    listed = json.loads(cli("sources", "list", "--json").out)
    assert [s["url"] for s in listed] == [url.replace("hunter2", "***")]


def test_serve_and_inbound_on_a_port_they_cannot_have_say_so_in_one_line(cli, ready) -> None:
    """--port 99999 was an OverflowError traceback; a port in use was uvicorn's log line and exit status 3."""
    import socket

    for command in ("serve", "inbound"):
        for port in ("99999", "-1"):
            result = cli(command, "--port", port)
            assert result.code == 2 and "Invalid value for '--port'" in result.err and "Traceback" not in result.err
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        result = cli("serve", "--port", str(port))
    assert result.code == 1 and result.err.strip() == (
        f"error: cannot listen on 127.0.0.1:{port} (Address already in use); choose another --host or --port")


def test_a_locked_sqlite_database_is_explained_as_a_lock_not_a_server_that_is_down() -> None:
    """It said "check NEWSLETTER_DATABASE_URL and that the server is up": SQLite has no server; another process held it."""
    import sqlite3

    from sqlalchemy.exc import OperationalError

    from newsletter.cli import database_advice

    locked = OperationalError("UPDATE deliveries …", {}, sqlite3.OperationalError("database is locked"))
    assert database_advice(locked).startswith("another process held the SQLite database's write lock past the busy timeout")
    read_only = OperationalError("INSERT …", {}, sqlite3.OperationalError("attempt to write a readonly database"))
    assert "a database file this user can write" in database_advice(read_only)
    gone = OperationalError("SELECT 1", {}, Exception("connection refused"))
    assert database_advice(gone) == "check NEWSLETTER_DATABASE_URL and that the server is up"
