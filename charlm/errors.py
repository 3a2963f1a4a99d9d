"""User errors: one clear line, a non-zero exit, no traceback."""

from __future__ import annotations

import contextlib
import logging
import sys


class UserError(ValueError):
    """A mistake the user can fix; the message names the bad value and how to fix it."""


@contextlib.contextmanager
def exit_on_user_error(reraise: bool = False):
    """Turn a ``UserError`` into one line ``error: <message>`` on stderr and exit status 2.

    With ``reraise`` (a Hydra multirun job) the error is logged to the job's log and raised
    again, so the launcher records this job as failed."""
    try:
        yield
    except UserError as err:
        if reraise:
            logging.getLogger("charlm").error("error: %s", err)
            raise
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
