"""Errors raised by the evaluators."""

from dmattack.core.errors import ConfigError, MissingResourceError


class MetricError(MissingResourceError):
    """A metric cannot be computed in this environment (e.g. missing feature-extractor weights).

    The message is always a single line saying what is missing and how to provide it.
    """


__all__ = ["ConfigError", "MetricError"]
