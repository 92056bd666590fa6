"""The root of the errors a person can act on: a server that cannot be reached, a port or a data
directory in use, a bad setting, an error answer of the API. The `noetl` command prints such an
error as one line, without a traceback, and exits with its `exit_code`."""

from __future__ import annotations


class Problem(RuntimeError):
    """Something the person running the command can fix; its message says what and how."""

    exit_code = 1


class BadInput(Problem):
    """What the command was given cannot be used: a bad setting, file or option value."""

    exit_code = 2
