"""User errors: one clear line, a non-zero exit, no traceback."""

from __future__ import annotations

import contextlib
import logging
import sys


class UserError(ValueError):
    """A mistake the user can fix; the message names the bad value and how to fix it."""


def user_error_in(err: BaseException | None) -> UserError | None:
    """``err`` if it is a ``UserError``, else the first ``UserError`` among its causes (one raised
    in a constructor comes out of Hydra's ``instantiate`` wrapped in an ``InstantiationException``)."""
    while err is not None and not isinstance(err, UserError):
        err = err.__cause__
    return err


@contextlib.contextmanager
def exit_on_user_error(reraise: bool = False):
    """Turn a ``UserError`` (also one wrapped by another exception, see ``user_error_in``) into
    one line ``error: <message>`` on stderr and exit status 2.

    With ``reraise`` (a Hydra multirun job) the error is logged to the job's log and the
    ``UserError`` raised again, so the launcher records this job as failed with its message."""
    try:
        yield
    except Exception as err:
        user_error = user_error_in(err)
        if user_error is None:
            raise
        if reraise:
            logging.getLogger("charlm").error("error: %s", user_error)
            raise user_error from None
        print(f"error: {user_error}", file=sys.stderr)
        sys.exit(2)


def known(registry: dict, key: str, value):
    """``registry[value]`` (a plug-in chosen by the setting ``key``, e.g. ``data.order``), or one
    line naming the value and the known ones."""
    if not isinstance(value, str) or value not in registry:
        raise UserError(f"{key}={value!r} is not known; use {', '.join(registry)}")
    return registry[value]
