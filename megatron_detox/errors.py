"""The one exception type for user mistakes.

The CLI prints a ``UserError`` as a single line and exits with code 2; any other
exception is an internal bug and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """A mistake the user can fix: bad file, bad field, bad value.

    The message should name the file (and line), the field and what to do.
    """


def where(path: object, line: int | None = None) -> str:
    """Format a location prefix ``path:line`` for error messages."""
    return f"{path}:{line}" if line is not None else str(path)
