"""Exit codes of every ``fti`` command: one meaning each, so scripts and CI can branch on them.

A failed check (``fti reproduce`` DIFFERENT, ``features show --verify`` mismatch, a lineage that does
not recompute) is not an error of the command: it ran and answered "no". Usage errors are argparse's
own 2. Everything the user fixes outside the command line -- the spec, the data, a setting, a
database or registry that is down, a version that does not exist -- is 3. A bug is 70 (BSD's
``EX_SOFTWARE``) with its traceback, never 1, so it is never mistaken for a "no".
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    CHECK_FAILED = 1
    USAGE = 2
    USER_ERROR = 3
    INTERNAL_ERROR = 70
    INTERRUPTED = 130


__all__ = ["ExitCode"]
