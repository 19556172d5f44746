"""The base of every failure tlpipe expects: bad settings or data, a refusal, a server away.

Their messages name the file, key or server and what to do, so the command line prints the
message alone (the traceback only with --verbose; MLflow runs keep it as the failure reason).
"""

from __future__ import annotations

import errno


class TlpipeError(Exception):
    """An expected failure; ``exit_code`` is what the command line exits with."""

    exit_code = 1


class SettingsError(TlpipeError, ValueError):
    """Settings or arguments that cannot be used."""

    exit_code = 2


# OSErrors of a place tlpipe must write to but cannot: expected, said as a message naming the
# path (the folder is read-only, not the user's, or full), never as a traceback.
_UNWRITABLE = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT}


def unwritable_message(error: BaseException) -> str | None:
    """What to tell the user about ``error`` if it is an unwritable or full place, else None."""
    if not isinstance(error, OSError) or error.errno not in _UNWRITABLE:
        return None
    advice = ("free space there" if error.errno in (errno.ENOSPC, errno.EDQUOT)
              else "make it writable")
    return (f"{error.filename or 'a file tlpipe writes'}: {error.strerror}: {advice}, or move "
            "it with the setting that names it (runs_dir, outputs_dir, features.store, "
            "tracking.uri, data.state_dir)")


def is_expected(error: BaseException | None) -> bool:
    """A failure the command line reports as its message alone."""
    return isinstance(error, TlpipeError) or unwritable_message(error) is not None
