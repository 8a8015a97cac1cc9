"""Errors the `p8` command turns into one line on stderr and an exit code."""


class P8Error(Exception):
    """A problem the user can fix; ``exit_code`` 1 = runtime, 2 = usage."""

    exit_code = 1


class UsageError(P8Error):
    """Bad arguments or inputs: exit code 2."""

    exit_code = 2
