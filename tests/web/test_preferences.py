"""The preferences page: everything editable, a preview of the next digest with its reasons, then save."""

from __future__ import annotations

from html.parser import HTMLParser

import pytest
from sqlalchemy import select

from newsletter import tokens
from newsletter.db.models import Paper, Subscriber, SubscriptionEvent
from tests.web.conftest import Front

PAPERS = [
    ("Fast Sampling for Diffusion Models", "We make diffusion models sample in four steps.", ["cs.LG"]),
    ("Diffusion Models for Video", "Video generation with diffusion models.", ["cs.CV"]),
    ("Graph Neural Networks at Scale", "Message passing on billion-edge graphs.", ["cs.LG"]),
]
FORM = {"topics": "diffusion models", "exclude": "", "authors": "", "describe": "", "timezone": "Europe/Berlin",
        "send_hour": "7", "frequency": "daily", "weekday": "0", "max_papers": "10"}


class FormAsShown(HTMLParser):
    """What a browser submits for a page's form left as it is: each field's shown value, the number
    fields' ``max`` (a browser will not submit a number above it)."""

    def __init__(self) -> None:
        super().__init__()
        self.fields: dict[str, list[str]] = {}
        self.max: dict[str, int] = {}
        self._open: tuple[str, str] | None = None  # (tag, name) of the textarea, select or option being read
        self._select: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        name = a.get("name", "")
        if tag == "input" and name and (a.get("type") not in ("checkbox", "radio") or "checked" in a):
            self.fields.setdefault(name, []).append(a.get("value", ""))
            if a.get("type") == "number" and "max" in a:
                self.max[name] = int(a["max"])
        elif tag == "textarea":
            self.fields[name] = [""]
            self._open = ("textarea", name)
        elif tag == "select":
            self._select = name
        elif tag == "option" and self._select and "selected" in a:
            self._open = ("option", self._select)
            if "value" in a:
                self.fields[self._select] = [a["value"]]
                self._open = None

    def handle_data(self, data: str) -> None:
        if self._open:
            tag, name = self._open
            self.fields[name] = [(self.fields.get(name) or [""])[0] + data]

    def handle_endtag(self, tag: str) -> None:
        if tag in ("textarea", "option"):
            self._open = None
        elif tag == "select":
            self._select = None


def form_as_shown(page: str) -> FormAsShown:
    parser = FormAsShown()
    parser.feed(page)
    return parser


@pytest.fixture
def ada(front: Front) -> str:
    """Ada's preferences page, with today's papers in the database."""
    with front.sessions() as session:
        session.add_all(Paper(key=f"2611.0000{n}", arxiv_id=f"2611.0000{n}", title=title, abstract=abstract, categories=categories,
                              links={"abs": f"https://arxiv.org/abs/2611.0000{n}"})
                        for n, (title, abstract, categories) in enumerate(PAPERS))
        session.commit()
    return front.path(tokens.PREFERENCES, front.add_active("ada@example.org", "graph neural networks"))


def test_the_page_shows_the_stored_preferences(front: Front, ada: str) -> None:
    page = front.client.get(ada)
    assert page.status_code == 200 and page.text.count("<h1>") == 1
    assert ">graph neural networks</textarea>" in page.text and "<option selected>Europe/Berlin</option>" in page.text
    assert 'data-guess="yes"' not in page.text, "a stored zone is not replaced by the browser's guess"
    for field in ("topics", "exclude", "authors", "describe", "timezone", "send_hour", "max_papers", "weekday"):
        assert f'<label for="{field}">' in page.text and f'id="{field}"' in page.text
    assert 'href="/unsubscribe/' in page.text


def test_the_preview_shows_the_papers_and_reasons_and_saves_nothing(front: Front, ada: str) -> None:
    before = front.snapshot()
    answer = front.form(ada, {**FORM, "action": "preview", "exclude": "video"})
    assert answer.status_code == 200
    preview = answer.text.split('<section class="preview"', 1)[1].split("</section>", 1)[0]
    assert "Fast Sampling for Diffusion Models" in preview and 'href="https://arxiv.org/abs/2611.00000"' in preview
    assert "Diffusion Models for Video" not in preview, "the exclusion on the form applies"
    assert "Graph Neural Networks" not in preview, "the stored topic does not: the form's settings are previewed"
    assert 'topic: "diffusion models"' in preview or "diffusion models" in preview.split("<ul class=\"reasons\">", 1)[1]
    assert ">video</textarea>" in answer.text, "the form keeps what was typed"
    assert front.snapshot() == before, "a preview changes nothing"


def test_save_stores_everything_on_the_form(front: Front, ada: str) -> None:
    answer = front.form(ada, {**FORM, "action": "save", "topics": "diffusion models^2\nsampling", "exclude": "video",
                              "authors": "Yann LeCun", "categories": ["cs.LG", "stat.ML"], "describe": "I build samplers.",
                              "timezone": "America/New_York", "send_hour": "18", "frequency": "weekly", "weekday": "4",
                              "max_papers": "3"})
    assert answer.status_code == 200 and "Saved. Your digest comes every Friday at 18:00 (America/New_York)." in answer.text
    with front.sessions() as session:
        row = session.scalars(select(Subscriber)).one()
        prefs = row.preferences
        assert (row.timezone, row.send_hour, row.frequency, row.send_weekday, row.max_papers) == ("America/New_York", 18, "weekly", 4, 3)
        assert prefs.topics == [{"phrase": "diffusion models", "weight": 2.0}, {"phrase": "sampling", "weight": 1.0}]
        assert (prefs.exclude, prefs.authors, prefs.categories, prefs.describe) == (["video"], ["Yann LeCun"], ["cs.LG", "stat.ML"],
                                                                                    "I build samplers.")
        assert row.next_send_at is not None and row.next_send_at.weekday() == 4
        assert session.scalars(select(SubscriptionEvent.kind).order_by(SubscriptionEvent.id)).all()[-1] == "changed"
    page = front.client.get(ada)
    assert ">diffusion models^2\nsampling</textarea>" in page.text and '<option value="4" selected>Friday</option>' in page.text


def test_saving_unchanged_keeps_a_count_of_papers_the_cli_allows_above_fifty(front: Front, ada: str) -> None:
    with front.sessions() as session:  # as `newsletter subscribers update ada@example.org --max-papers 80` stores it
        session.scalars(select(Subscriber)).one().max_papers = 80
        session.commit()
    shown = form_as_shown(front.client.get(ada).text)
    assert shown.fields["max_papers"] == ["80"] and shown.max["max_papers"] >= 80, "a browser would refuse to submit it"
    answer = front.client.post(ada, data={**shown.fields, "action": "save"})
    assert answer.status_code == 200 and "Saved." in answer.text, answer.text
    with front.sessions() as session:
        row = session.scalars(select(Subscriber)).one()
        assert (row.max_papers, row.timezone, row.preferences.topics) == (80, "Europe/Berlin", [{"phrase": "graph neural networks",
                                                                                              "weight": 1.0}])


def test_a_form_with_mistakes_saves_nothing_and_escapes_what_came_back(front: Front, ada: str) -> None:
    before = front.snapshot()
    answer = front.form(ada, {**FORM, "action": "save", "topics": "<script>alert(1)</script>^99", "categories": ["<b>x</b>"],
                              "describe": "x" * 1_001})
    assert answer.status_code == 400
    assert "<script>alert(1)" not in answer.text and "&lt;script&gt;alert(1)&lt;/script&gt;^99" in answer.text
    assert "the weight must be between 0.1 and 10" in answer.text and "At most 1,000 characters" in answer.text
    assert "is not an arXiv category" in answer.text
    assert front.snapshot() == before


@pytest.mark.parametrize("zone", ["localtime", "Factory"])
def test_a_zone_file_that_is_no_place_is_not_offered_nor_taken(front: Front, ada: str, zone: str) -> None:
    """'localtime' is the server's own zone: a subscriber's hour would follow the server wherever it is moved."""
    assert f'value="{zone}"' not in front.client.get(ada).text
    before = front.snapshot()
    answer = front.form(ada, {**FORM, "action": "save", "timezone": zone})
    assert answer.status_code == 400 and "Choose a time zone from the list." in answer.text
    assert front.snapshot() == before


@pytest.mark.parametrize("status", ["unsubscribed", "pending"])
def test_a_subscription_that_is_not_active_has_nothing_to_change(front: Front, ada: str, status: str) -> None:
    with front.sessions() as session:
        session.scalars(select(Subscriber)).one().status = status
        session.commit()
    before = front.snapshot()
    page = front.client.get(ada)
    assert page.status_code == 410 and "not subscribed now" in page.text
    assert front.client.post(ada, data={**FORM, "action": "save"}).status_code in (403, 410)
    assert front.snapshot() == before
