"""Errors a person can act on, and the one place secrets are taken out of what is shown.

Every error raised for bad input or a broken environment is a ``NewsletterError``: its message
names the thing that is wrong and says what to do. The CLI prints it on one line and exits
non-zero; nothing catches it silently.
"""


import re

# user:password@ in any URL, and password-like query parameters (libpq's ?password=, tokens in feed URLs).
_USERINFO_PASSWORD = re.compile(r"(?P<head>[a-z][a-z0-9+.-]*://[^/@:\s]*):[^@/\s]*@", re.I)
_SECRET_PARAMETER = re.compile(r"(?P<head>[?&;](?:password|passwd|pass|pwd|secret|token|api_?key|key|auth)=)[^&#\s'\"]*", re.I)


def redact(text: str) -> str:
    """``text`` with the passwords of any URLs in it replaced by ``***``: for everything printed or logged."""
    return _SECRET_PARAMETER.sub(r"\g<head>***", _USERINFO_PASSWORD.sub(r"\g<head>:***@", text))


def database_error(exc: BaseException) -> str:
    """The driver's own message, without SQLAlchemy's background link or the SQL, on one line, passwords masked;
    any other exception's message the same way."""
    original = getattr(exc, "orig", None) or exc
    text = " ".join(str(original).split())
    text = text.split("(Background on this error at:")[0].split("[SQL:")[0].strip()
    return redact(f"{type(original).__name__}: {text}")


class NewsletterError(Exception):
    """Base class: the message is shown to the user as it is."""


class ConfigError(NewsletterError):
    """A setting is missing or invalid."""


class NotFound(NewsletterError):
    """A subscriber, source or paper named by the user does not exist."""


class InvalidInput(NewsletterError):
    """An email address, a time zone, a CSV row ... that cannot be accepted."""


class FeedError(NewsletterError):
    """A source could not be fetched or is not a feed."""


class DeliveryError(NewsletterError):
    """The mail relay could not be reached or refused to work at all."""
