"""Headers on every response of the web app, errors included.

The pages carry capability tokens in their URLs and show a subscriber's choices: nothing may be
sniffed into another type, leak the URL as a Referer, sit in a shared cache, load anything from
elsewhere or be framed. The one stylesheet and the one script are inline and allowed by their
hashes; no inline script or style other than exactly those runs.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Mapping

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

CSP = "Content-Security-Policy"


def content_hash(text: str) -> str:
    """The CSP source that allows exactly this inline ``<style>`` or ``<script>`` element and no other."""
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


style_hash = content_hash  # the name the feedback tests know it by


def security_headers(*, style_sources: str, script_sources: str = "'none'") -> dict[str, str]:
    policy = "; ".join([
        "default-src 'none'",  # no images, fonts, frames, connections from anywhere
        f"style-src {style_sources}",
        f"script-src {script_sources}",
        "form-action 'self'",  # every form posts back to this site
        "base-uri 'none'",
        "frame-ancestors 'none'",  # no clickjacking of the buttons
    ])
    return {
        CSP: policy,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",  # the URL is the token
        "Cache-Control": "no-store",
        "X-Frame-Options": "DENY",  # frame-ancestors for browsers that predate it
    }


class SecurityHeaders:
    """ASGI middleware: sets ``headers`` on every HTTP response.

    A response that brings its own Content-Security-Policy keeps it: the archive page shows an email's
    HTML, whose inline styles need a policy of their own (a stricter one: see ``archive``).
    """

    def __init__(self, app: ASGIApp, *, headers: Mapping[str, str]) -> None:
        self.app, self.headers = app, dict(headers)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in self.headers.items():
                    if name == CSP and CSP in headers:
                        continue
                    headers[name] = value
            await send(message)

        await self.app(scope, receive, send_with_headers)
