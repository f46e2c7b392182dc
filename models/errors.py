"""The one exception type for mistakes a user can fix (a config value, a missing or damaged file, an
environment variable). The ``synthloop`` command prints it as ONE line naming the file, key or variable
and what to do, and exits with :data:`USER_ERROR_EXIT` (2); ``SYNTHLOOP_DEBUG=1`` shows the traceback.

It lives in ``models/`` (the lowest layer) so that every layer can raise it.
"""

from __future__ import annotations

#: Exit code of a run refused because of a user mistake (argparse's own code for usage errors).
USER_ERROR_EXIT = 2
DEBUG_ENV = "SYNTHLOOP_DEBUG"


class UserError(Exception):
    """A mistake the user can fix; ``str(exc)`` is the whole message (one line: where, what, what to do)."""


#: Exit code of a run that a guard stopped on purpose (too many non-finite losses, a generator that keeps
#: failing): the message says why; the checkpoints written so far are kept.
RUN_ABORTED_EXIT = 3


class RunAborted(RuntimeError):
    """A run stopped on purpose by one of its guards; printed as one line (no traceback), exit 3."""


def env_int(name: str, default: int, *, minimum: int = 0) -> int:
    """An integer environment variable, or ``default`` when unset; a bad value is a :class:`UserError`
    naming the variable."""
    import os

    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise UserError(f"environment variable {name}={raw!r} is not an integer; set it to an integer "
                        f">= {minimum} or unset it (default {default})") from None
    if value < minimum:
        raise UserError(f"environment variable {name}={value} must be >= {minimum}; unset it for the "
                        f"default ({default})")
    return value


# -- argparse value types: a bad value is argparse's one-line usage error (exit 2) naming the option ------
def positive_int(text: str) -> int:
    """``type=`` for an option that must be an integer >= 1 (steps, counts, sizes)."""
    import argparse

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be >= 1")
    return value


def non_negative_float(text: str) -> float:
    """``type=`` for an option that must be a finite number >= 0 (a noise scale, a weight)."""
    import argparse
    import math

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"{value} must be a finite number >= 0")
    return value
