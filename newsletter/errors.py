"""Errors a person can act on.

Every error raised for bad input or a broken environment is a ``NewsletterError``: its message
names the thing that is wrong and says what to do. The CLI prints it on one line and exits
non-zero; nothing catches it silently.
"""


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
