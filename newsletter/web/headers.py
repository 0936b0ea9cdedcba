"""Headers on every response of the web app, errors included.

The pages carry capability tokens in their URLs and show a subscriber's choices: nothing may be
sniffed into another type, leak the URL as a Referer, sit in a shared cache, load anything from
elsewhere or be framed.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Mapping

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send


def style_hash(css: str) -> str:
    """The CSP source that allows exactly this ``<style>`` element and no other inline style."""
    return "'sha256-" + base64.b64encode(hashlib.sha256(css.encode()).digest()).decode() + "'"


def security_headers(*, style_sources: str) -> dict[str, str]:
    policy = "; ".join([
        "default-src 'none'",  # no scripts, images, fonts, frames, connections
        f"style-src {style_sources}",
        "form-action 'self'",  # the confirm button posts back to its own URL
        "base-uri 'none'",
        "frame-ancestors 'none'",  # no clickjacking of the confirm button
    ])
    return {
        "Content-Security-Policy": policy,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",  # the URL is the token
        "Cache-Control": "no-store",
    }


class SecurityHeaders:
    """ASGI middleware: sets ``headers`` on every HTTP response."""

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
                    headers[name] = value
            await send(message)

        await self.app(scope, receive, send_with_headers)
