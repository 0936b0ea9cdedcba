"""The web front's HTML: Jinja2 templates in ``templates/web/``, one stylesheet and one small script.

Both are inlined (one request per page, no outside assets) and allowed by their CSP hashes
(``headers``). Every string from outside reaches a page through Jinja2's autoescaping.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jinja2
from markupsafe import Markup
from starlette.background import BackgroundTask
from starlette.responses import HTMLResponse

from newsletter.web.headers import content_hash

STYLESHEET = "web/site.css"
SCRIPT = "web/site.js"  # guesses the time zone; previews preferences without a reload


class Refused(Exception):
    """A request that cannot be served, with the page that says why (rendered by the app's handler)."""

    def __init__(self, status: int, title: str, text: str, *, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(text)
        self.status, self.title, self.text, self.headers = status, title, text, dict(headers or {})


def sentence(text: str) -> str:
    """A service's error ("this link has expired …") as a sentence for a page."""
    text = text.strip()
    return text[:1].upper() + text[1:] + ("" if text.endswith((".", "!", "?")) else ".")


class Pages:
    """Renders ``templates/web/*.html.j2`` into responses, with the list's name, the stylesheet and the script."""

    def __init__(self, *, templates: jinja2.Environment, list_name: str) -> None:
        self.templates = templates
        self.list_name = list_name
        self.css = self._source(STYLESHEET)
        self.script = self._source(SCRIPT)

    def _source(self, name: str) -> str:
        assert self.templates.loader is not None
        source, _, _ = self.templates.loader.get_source(self.templates, name)
        return source.strip()

    @property
    def style_source(self) -> str:
        return content_hash(self.css)

    @property
    def script_source(self) -> str:
        return content_hash(self.script)

    def html(self, name: str, **context: Any) -> str:
        return self.templates.get_template(f"web/{name}.html.j2").render(
            list_name=self.list_name, css=Markup(self.css), script=Markup(self.script), **context)

    def render(self, name: str, *, status: int = 200, headers: Mapping[str, str] | None = None,
               background: BackgroundTask | None = None, **context: Any) -> HTMLResponse:
        return HTMLResponse(self.html(name, **context), status_code=status, headers=headers, background=background)

    def message(self, title: str, text: str, *, status: int = 200, link: tuple[str, str] | None = None,
                headers: Mapping[str, str] | None = None) -> HTMLResponse:
        """A page with one paragraph of plain text and, optionally, one link (href, words)."""
        return self.render("message", status=status, headers=headers, title=title, text=text, link=link)

    def refused(self, refused: Refused) -> HTMLResponse:
        return self.message(refused.title, refused.text, status=refused.status, headers=refused.headers)
