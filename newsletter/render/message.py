"""OutgoingEmail → RFC 5322 bytes: multipart/alternative (text, then HTML) with list headers.

The list headers follow RFC 2369 / RFC 8058 as Gmail and Yahoo require of bulk mail: an HTTPS
one-click unsubscribe URL plus a mailto, and ``List-Unsubscribe-Post``.
"""

from __future__ import annotations

import datetime as dt
import re
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime

from newsletter.records import OutgoingEmail

# Every control character, and everything str.splitlines() breaks at (the email policy refuses those).
CONTROL = re.compile(r"[\x00-\x1f\x7f\x85\u2028\u2029]+")


def header_text(value: str) -> str:
    """A header value on one line whatever the input held: no CR/LF can start a new header."""
    return CONTROL.sub(" ", value).strip()


def build_message(
    email: OutgoingEmail, *, from_address: str, list_name: str, list_id: str, date: dt.datetime, to: str | None = None
) -> EmailMessage:
    """The MIME message; ``to`` overrides the recipient (the dev redirect)."""
    message = EmailMessage(policy=SMTP)
    message["From"] = f"{header_text(list_name)} <{from_address}>"
    message["To"] = to or email.to
    message["Subject"] = header_text(email.subject)
    message["Date"] = format_datetime(date if date.tzinfo else date.replace(tzinfo=dt.UTC))
    message["Message-ID"] = email.message_id
    message["List-Id"] = f"{header_text(list_name)} <{list_id}>"
    message["List-Unsubscribe"] = f"<{email.unsubscribe_url}>, <mailto:{from_address}?subject=unsubscribe>"
    message["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    message.set_content(email.text)
    message.add_alternative(email.html, subtype="html")
    return message
