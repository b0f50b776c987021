"""The two kinds of expected failure, and how a command reports them.

Every error a user can cause or meet is one of two kinds: :class:`InputError`
(bad input: a file, an option, a configuration key; exit code 2) or
:class:`ComputationError` (a computation that failed: a diverged run, a failed
solve, non-finite samples; exit code 1). Each message is one line that names
the file or key it is about. :func:`run_command` turns them into one line on
stderr and an exit code; tracebacks appear only with ``--debug`` or
``PIDM_FEM_DEBUG=1``.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Callable
from typing import NoReturn

#: environment variable that makes commands show tracebacks
DEBUG_VARIABLE = "PIDM_FEM_DEBUG"


def one_line(text: object) -> str:
    """``text`` with every run of whitespace, newlines included, as one space."""
    return " ".join(str(text).split())


class InputError(ValueError):
    """Bad input (a file, an option, a configuration key): exit code 2."""

    exit_code = 2


class ComputationError(RuntimeError):
    """A computation that failed (diverged, non-finite, a worker lost): exit code 1."""

    exit_code = 1


class Interrupted(ComputationError):
    """SIGINT or SIGTERM stopped the work after saving what it had; the message says how to resume."""

    def __init__(self, message: str, signum: int = signal.SIGINT):
        super().__init__(message)
        self.signum = int(signum)
        self.exit_code = 128 + self.signum

    def __reduce__(self):  # keeps the signal across processes
        return type(self), (str(self), self.signum)


def debugging(argv: list[str] | None = None) -> bool:
    """Whether tracebacks are wanted: ``--debug`` in ``argv`` or ``PIDM_FEM_DEBUG`` set to a true value."""
    flag = os.environ.get(DEBUG_VARIABLE, "").strip().lower() not in ("", "0", "false", "no")
    return flag or "--debug" in (sys.argv[1:] if argv is None else argv)


def run_command(prog: str, body: Callable[[], int], debug: bool = False) -> int:
    """Run a command's body; expected failures become one line on stderr and their exit code.

    Parameters
    ----------
    prog
        The command's name, the prefix of its error lines.
    body
        The command; returns its exit code.
    debug
        Re-raise every error with its traceback instead.
    """
    try:
        return body()
    except (InputError, ComputationError) as err:
        if debug:
            raise
        print(f"{prog}: {'' if isinstance(err, Interrupted) else 'error: '}{one_line(err)}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"{prog}: interrupted; finished work is kept, run the same command again to resume", file=sys.stderr)
        return 128 + signal.SIGINT
    except OSError as err:  # a file system or HDF5 error outside the checks (disk full, permissions)
        if debug:
            raise
        where = f"{err.filename}: " if getattr(err, "filename", None) else ""
        print(f"{prog}: error: {where}{one_line(err.strerror or err)}", file=sys.stderr)
        return 1


class OneLineParser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line (and exit code 2), like every other error."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {one_line(message)} (see {self.prog} --help)\n")
