"""Errors the user can fix, and how they reach the user: one line saying what to do, no traceback.

``UserError`` is the base of every error whose message names the file, flag or value at fault and
what to do about it. An operating-system error caused by the user's machine (no space left, a
read-only disk, no permission, a file where a directory should be) is the user's to fix as well;
``user_message`` recognises both. The command line (``cli.main``) prints that message as one
``Error:`` line and exits with the error's code; ``--debug`` (or ``YOUR_AI_DEBUG=1``) shows the
traceback instead. Any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import errno
import re

from safetensors import SafetensorError


class UserError(Exception):
    """A failure the user caused and can fix; the message says which file, flag or value, and what to do."""

    exit_code = 1

    def __init__(self, message: str, exit_code: int | None = None):
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class OutputError(UserError):
    """An output path that cannot be written; the message names it."""


# What the machine says, and what to do about it, for the errors a user's environment causes.
ENVIRONMENT_ERRORS = {
    errno.ENOSPC: "no space left on the device; free some space or write somewhere else",
    errno.EDQUOT: "disk quota exceeded; free some space or write somewhere else",
    errno.EFBIG: "file too large for this file system; write somewhere else",
    errno.EROFS: "read-only file system; choose a writable location",
    errno.EACCES: "permission denied; choose a location you can write to, or change its permissions",
    errno.EPERM: "operation not permitted; choose a location you can write to, or change its permissions",
    errno.ENOTDIR: "a part of the path is a file, not a directory; choose another path",
    errno.EEXIST: "a part of the path exists and is not a directory; choose another path",
    errno.EISDIR: "is a directory; give a file path",
    errno.ENAMETOOLONG: "file name too long; choose a shorter path",
}

# Errors raised by the safetensors writer (Rust) carry the OS error only in their text.
_OS_ERROR_CODE = re.compile(r"\(os error (\d+)\)")
# numpy's ``tofile`` (the GGUF writer's) reports a short write, which a full disk causes, without an errno.
_SHORT_WRITE = re.compile(r"^\d+ requested and \d+ written$")

# The exception types that can carry an error of the environment, and all ``user_message`` can recognise.
ENVIRONMENT_ERROR_TYPES = (OSError, SafetensorError)
RECOGNISED = (UserError, *ENVIRONMENT_ERROR_TYPES)


def environment_reason(error: BaseException) -> str | None:
    """What to tell the user about an error of their environment (see ``ENVIRONMENT_ERRORS``); None for
    any other error."""
    code = error.errno if isinstance(error, OSError) else None
    if code is None and isinstance(error, SafetensorError):
        match = _OS_ERROR_CODE.search(str(error))
        code = int(match.group(1)) if match else None
    if code is None and isinstance(error, OSError) and _SHORT_WRITE.match(str(error)):
        code = errno.ENOSPC
    return ENVIRONMENT_ERRORS.get(code)


def user_message(error: BaseException) -> tuple[str, int] | None:
    """The one line and the exit code to show for a user-caused error; None for anything else (a bug)."""
    if isinstance(error, UserError):
        return str(error), error.exit_code
    reason = environment_reason(error)
    if reason is None:
        return None
    name = getattr(error, "filename", None)
    return (f"{name}: {reason}" if name else reason), 1
