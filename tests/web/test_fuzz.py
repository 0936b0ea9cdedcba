"""The HTTP endpoints fuzzed with hypothesis: no 500s, no change without a valid token, no reflected markup."""

from __future__ import annotations

import string

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from newsletter import tokens
from tests.web.conftest import SIGN_UP, Front

MARKER = '<script>alert("fuzz")</script>'
FIELDS = ("email", "topics", "exclude", "authors", "categories", "describe", "timezone", "send_hour", "frequency", "weekday",
          "max_papers", "action", "List-Unsubscribe", "csrf_token", "other")
SEGMENT = string.ascii_letters + string.digits + "-_.~<>\"'%;:@"
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

values = st.one_of(st.text(max_size=40), st.just(MARKER), st.tuples(st.text(max_size=10), st.text(max_size=10)).map(MARKER.join),
                   st.sampled_from(["daily", "weekly", "7", "0", "-1", "99999999999999999999", "Europe/Berlin", "save", "preview",
                                    "One-Click", "ada@example.org", "cs.LG", "x" * 300]))
forms = st.dictionaries(st.sampled_from(FIELDS), st.one_of(values, st.lists(values, max_size=3)), max_size=10)
segments = st.text(alphabet=SEGMENT, min_size=1, max_size=60)
paths = st.one_of(
    st.builds(lambda kind, token: f"/{kind}/{token}", st.sampled_from(["confirm", "preferences", "unsubscribe", "feedback"]), segments),
    st.builds(lambda date, token: f"/digest/{date}/{token}", st.one_of(st.dates().map(str), segments), segments),
    st.builds(lambda token, paper, way: f"/feedback/{token}/{paper}/{way}", segments, st.integers(-5, 2**70), segments),
    st.sampled_from(["/", "/subscribe", "/healthz"]), segments.map(lambda s: "/" + s),
)


def no_markup(text: str) -> None:
    assert MARKER not in text and 'alert("fuzz")</script>' not in text, "a field came back as markup"


def test_no_request_without_a_valid_token_changes_anything_or_fails(front: Front) -> None:
    subscriber_id = front.add_active("ada@example.org", "diffusion models")
    front.token_for("/subscribe")  # the browser holds a CSRF cookie, but no form's token
    before = front.snapshot()

    @FUZZ
    @given(method=st.sampled_from(["GET", "POST", "HEAD", "PUT"]), path=paths, form=forms)
    def request(method: str, path: str, form: dict[str, object]) -> None:
        form = {k: v for k, v in form.items() if k != "List-Unsubscribe"}  # one-click needs no CSRF: see the next test
        answer = front.client.request(method, path, data=form if method in ("POST", "PUT") else None)  # type: ignore[arg-type]
        assert answer.status_code < 500, (method, path, form, answer.text[-500:])
        no_markup(answer.text)

    request()
    assert front.snapshot() == before
    assert front.status_of("ada@example.org") == "active" and subscriber_id


def test_one_click_with_any_forged_token_changes_nothing(front: Front) -> None:
    front.add_active("ada@example.org")
    before = front.snapshot()

    @FUZZ
    @given(token=segments, extra=forms)
    def one_click(token: str, extra: dict[str, object]) -> None:
        answer = front.client.post(f"/unsubscribe/{token}", data={**extra, "List-Unsubscribe": "One-Click"})  # type: ignore[dict-item]
        assert answer.status_code in (400, 404, 405), (token, answer.status_code)
        no_markup(answer.text)

    one_click()
    assert front.snapshot() == before


def test_the_sign_up_form_answers_any_fields_with_a_page_never_markup(front: Front) -> None:
    token = front.token_for("/subscribe")

    @FUZZ
    @given(form=forms)
    def sign_up(form: dict[str, object]) -> None:
        answer = front.client.post("/subscribe", data={**SIGN_UP, **form, "csrf_token": token})  # type: ignore[dict-item]
        assert answer.status_code in (200, 400), (form, answer.status_code, answer.text[-500:])
        no_markup(answer.text)

    sign_up()


def test_the_preferences_form_answers_any_fields_with_a_page_never_markup(front: Front) -> None:
    path = front.path(tokens.PREFERENCES, front.add_active("ada@example.org", "diffusion models"))
    token = front.token_for(path)

    @settings(FUZZ, max_examples=60)  # three full pages per example
    @given(form=forms, action=st.sampled_from(["preview", "save"]))
    def change(form: dict[str, object], action: str) -> None:
        answer = front.client.post(path, data={**SIGN_UP, **form, "action": action, "csrf_token": token})  # type: ignore[dict-item]
        assert answer.status_code in (200, 400), (form, answer.status_code, answer.text[-500:])
        no_markup(answer.text)
        page = front.client.get(path)
        assert page.status_code == 200, "whatever was saved, the page still shows"
        no_markup(page.text)

    change()
