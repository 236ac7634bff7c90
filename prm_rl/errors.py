"""The one base class of the mistakes a start-up check finds in what the user asked for.

``launch/train.py`` prints such an error as one line ``<label>: <message>`` (rank 0 only) and exits with
:data:`EXIT_USAGE`, before any model loads where the check allows. The exit codes of every outcome are
listed in docs/checkpoints.md, "Exit codes".
"""
from __future__ import annotations

import sys
from contextlib import contextmanager

EXIT_USAGE = 2  # a start-up check refused the run; nothing in the run directory was changed


class UsageError(ValueError):
    """A bad config value, data file, model path or run directory; the message names it, on one line."""

    label = "error"

    def one_line(self) -> str:
        return f"{self.label}: {' '.join(str(self).split())}"


class InputError(UsageError):
    """A bad row or field of a command's input file; the message names the file and row (``PATH:LINE: ...``)."""

    label = "input error"


class ConfigError(UsageError):
    """A config value breaks a rule; the message names the field (its dotted path)."""

    label = "config error"


@contextmanager
def exit_on_usage_error():
    """Around a command's checks of its arguments: a :class:`UsageError` is its one line on stderr and exit 2."""
    try:
        yield
    except UsageError as err:
        print(err.one_line(), file=sys.stderr)
        sys.exit(EXIT_USAGE)
