"""The one exception type users see.

Every problem with user input (a missing or corrupt file, a wrong shape, an
unknown emotion) is raised as `InputError` naming the file and the problem; the
CLI prints it as a single line and exits with status 2, without a traceback.
"""

from __future__ import annotations

import os


class EmoTalkerError(Exception):
    """Base class of errors meant for the user rather than a traceback."""


class InputError(EmoTalkerError):
    """Bad input: `path` names the file (or folder) at fault, `problem` says what is wrong."""

    def __init__(self, path: str | os.PathLike | None, problem: str):
        self.path = None if path is None else os.fspath(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}" if self.path else problem)


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM stopped a command that stops its own child processes first (bake-batch).

    A KeyboardInterrupt, so that code which cleans up after Ctrl-C does so here too; the CLI prints
    the message as one line and exits with the shell's status for the signal, 128 + `signum`.
    """

    def __init__(self, signum: int, message: str):
        self.signum = signum
        super().__init__(message)
