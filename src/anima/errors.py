"""User-facing errors: one line, no traceback, non-zero exit (see cli.main)."""

from __future__ import annotations


class AnimaError(Exception):
    """A problem the user can fix (bad input, missing file, wrong config value).

    The CLI prints ``anima: error: <message>`` and exits with status 2, never a traceback.
    The message must name the file, line, key or value at fault.
    """


class ConfigError(AnimaError):
    """A config key has a wrong type, an out-of-range value or does not exist."""


class DataError(AnimaError):
    """A data source is missing, empty or malformed."""


class ModelError(AnimaError):
    """A model URI cannot be resolved, or a model does not match what is asked of it."""
