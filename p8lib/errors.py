"""Errors the `p8` command turns into one line on stderr and an exit code."""


class P8Error(Exception):
    """A problem the user can fix; ``exit_code`` 1 = runtime, 2 = usage."""

    exit_code = 1


class UsageError(P8Error):
    """Bad arguments or inputs: exit code 2."""

    exit_code = 2


def first_line(exc: BaseException, default: str = "") -> str:
    """The first line of ``exc``'s message, or ``default`` when it has none: one line on stderr
    for errors that arrive from elsewhere (Spark, Pillow, pillow-heif) with many.

    >>> first_line(ValueError("Invalid input\\nmore")), first_line(OSError(), "broken file")
    ('Invalid input', 'broken file')
    """
    text = str(exc).strip()
    return text.splitlines()[0] if text else default
