"""The one exception type for a user's mistake, shared by every command (no heavy imports).

``stampflow`` prints a :class:`UserError` as one line, ``stampflow COMMAND: message``, and exits
with status 2, before any work starts; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

__all__ = ["OptionsError", "UserError"]


class UserError(ValueError):
    """A mistake in what the user asked for: a typo'd path, an unwritable output, a bad name."""


class OptionsError(UserError):
    """A user's mistake in the flags: one line, printed without a traceback (exit status 2)."""
