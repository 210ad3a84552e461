"""The one error base of the project: a failure the user can fix (a missing file, a bad row, a store that
does not match). Entry points print such an error as one line naming the file, key or row, with no
traceback; anything else is a bug and keeps its traceback."""

from __future__ import annotations


class KdsrError(Exception):
    """A known failure of a stage. Entry points exit 1 on it (2 when it is a `ConfigError`)."""
