"""The few HTML pages the web app answers with: one small page shape, no scripts, no outside assets."""

from __future__ import annotations

from collections.abc import Mapping
from html import escape

from starlette.responses import HTMLResponse

CSS = ("body{font-family:system-ui,sans-serif;max-width:36rem;margin:3rem auto;padding:0 1rem;line-height:1.5}"
       "button{font:inherit;padding:.5rem 1.25rem;cursor:pointer}")

PAGE = """<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width">
<title>{title}</title><style>{css}</style></head><body>
<h1>{title}</h1>
{body}</body></html>"""


def page(title: str, body: str, status: int = 200, headers: Mapping[str, str] | None = None) -> HTMLResponse:
    """``body`` is HTML: escape what comes from outside before passing it."""
    return HTMLResponse(PAGE.format(title=escape(title), css=CSS, body=body), status_code=status, headers=headers)


def message(title: str, text: str, status: int = 200) -> HTMLResponse:
    """A page with one paragraph of plain text."""
    return page(title, f"<p>{escape(text)}</p>", status)


def confirm_feedback(*, paper_title: str, up: bool) -> HTMLResponse:
    """The page behind a "more / less like this" link: it records nothing until the button is pressed."""
    what = "more" if up else "fewer"
    return page("More like this?" if up else "Less like this?", f"""<p>“{escape(paper_title)}”</p>
<form method="post"><button type="submit">{'More' if up else 'Fewer'} papers like this</button></form>
<p>Your next digests will have {what} papers like this one.</p>
""")


def feedback_recorded(*, paper_title: str, up: bool) -> HTMLResponse:
    more = "more" if up else "fewer"
    return message("Thanks", f"Your next digests will have {more} papers like “{paper_title}”.")
