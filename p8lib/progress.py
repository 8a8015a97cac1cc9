"""Progress a person can follow: done / total, speed and time left, read from the running job.

In a terminal one line is redrawn in place (rich, a few times a second); anywhere else (a file,
CI, a pipe, a notebook, Livy) plain lines go to the log: at the start, every ~10 % or 30 s
(whichever comes first) and at the end — never a carriage return.

Examples
--------
>>> progress_line("featurizing", 12480, 23619, "images", rate=148.0, failed=0)
'featurizing 12,480 / 23,619 images · 148 img/s · 1 min 15 s left'
>>> progress_line("uploading", 3, 4, "files", rate=0.0, failed=1)
'uploading 3 / 4 files · 1 failed'
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

PLAIN_STEP = 0.10  # a plain line at every tenth of the work…
PLAIN_SECONDS = 30.0  # …or after this long without one
POLL_SECONDS = 0.25  # how often the job's counters are read (a few redraws a second at most)
SHORT_UNITS = {"images": "img", "files": "files", "photos": "photos"}


def duration(seconds: float) -> str:
    """``75`` → ``1 min 15 s``; ``3720`` → ``1 h 2 min``; ``9.24`` → ``9.2 s``."""
    if seconds < 10:
        return f"{seconds:.1f} s"
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600} h {seconds % 3600 // 60} min"
    if seconds >= 60:
        return f"{seconds // 60} min {seconds % 60} s"
    return f"{seconds} s"


def progress_line(
    what: str, done: int, total: int, unit: str, *, rate: float, failed: int = 0, extra: str = ""
) -> str:
    """``featurizing 12,480 / 23,619 images · 148 img/s · 1 min 15 s left``."""
    parts = [f"{what} {done:,} / {total:,} {unit}"]
    if extra:
        parts.append(extra)
    if rate > 0:
        shown = f"{rate:,.0f}" if rate >= 10 else f"{rate:.1f}"
        parts.append(f"{shown} {SHORT_UNITS.get(unit, unit)}/s")
        if done < total:
            parts.append(f"{duration((total - done) / rate)} left")
    if failed:
        parts.append(f"{failed:,} failed")
    return " · ".join(parts)


class Reporter:
    """Turns (done, failed) readings into what a person sees; see the module docstring.

    ``log``: where plain lines go (None: nowhere). ``live``: redraw one line on stderr instead.
    """

    def __init__(
        self,
        what: str,
        total: int,
        unit: str,
        *,
        log: Callable[[str], None] | None,
        live: bool = False,
        extra: str = "",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.what, self.total, self.unit, self.log = what, max(total, 0), unit, log
        self.clock = clock
        self.start = self.last_time = clock()
        self.last_done = -1
        self.extra = extra  # shown after the counts, e.g. "35.2 MB to send"
        self.lock = threading.RLock()  # updates come from a polling thread, finish from the job
        self.finished = False
        self.bar: Any = None
        if live and log is not None:
            self.bar = _live_bar()
            self.task = self.bar.add_task(self._line(0, 0), total=None)
            self.bar.start()
        else:
            self._say(0, 0)

    def _line(self, done: int, failed: int) -> str:
        elapsed = self.clock() - self.start
        rate = done / elapsed if done and elapsed > 0 else 0.0
        return progress_line(
            self.what, done, self.total, self.unit, rate=rate, failed=failed, extra=self.extra
        )

    def _say(self, done: int, failed: int) -> None:
        if self.log is not None:
            self.log(self._line(done, failed))
        self.last_done, self.last_time = done, self.clock()

    def update(self, done: int, failed: int = 0) -> None:
        """The job's counters now: ``done`` includes ``failed``."""
        with self.lock:
            if not self.finished:
                self._update(done, failed)

    def _update(self, done: int, failed: int) -> None:
        if self.bar is not None:
            self.bar.update(self.task, description=self._line(done, failed))
            return
        step = max(1, int(self.total * PLAIN_STEP))
        due = done >= self.last_done + step or self.clock() - self.last_time >= PLAIN_SECONDS
        if done != self.last_done and due and done < self.total:
            self._say(done, failed)

    def finish(
        self, done: int, failed: int = 0, *, total: int | None = None, note: str = ""
    ) -> None:
        """The last line: the counts reached (out of ``total``, if it turned out otherwise),
        the time taken, ``note``, the speed."""
        with self.lock:
            if not self.finished:
                self.finished = True
                self._finish(done, failed, total, note)

    def _finish(self, done: int, failed: int, total: int | None, note: str) -> None:
        self.total = self.total if total is None else total
        self.extra = " · ".join(p for p in (duration(self.clock() - self.start), note) if p)
        if self.bar is not None:
            self.bar.update(self.task, description=self._line(done, failed))
            self.close()
        else:
            self._say(done, failed)

    def close(self) -> None:
        """No more lines; give the terminal back (its cursor) if the line was being redrawn."""
        with self.lock:
            self.finished = True
            if self.bar is not None:
                self.bar.stop()
                self.bar = None


def _live_bar() -> Any:
    """rich's progress display on stderr: one line, the text only, 4 redraws a second."""
    from rich.console import Console
    from rich.progress import Progress, TextColumn

    console = Console(stderr=True, highlight=False)
    # Standard output stays where it goes: rich would otherwise send what is printed there while
    # the line is shown to stderr's terminal (`p8 predict photos/ > answers.txt` as it streams).
    return Progress(
        TextColumn("p8: {task.description}"),
        console=console,
        refresh_per_second=4,
        transient=False,
        redirect_stdout=False,
    )


@contextmanager
def watching(
    reporter: Reporter, read: Callable[[], tuple[int, int]], *, every: float | None = POLL_SECONDS
) -> Iterator[None]:
    """Poll ``read()`` → (done, failed) every ``every`` seconds in a thread while the block runs
    (``None``: no thread, nobody is told)."""
    if every is None:
        yield
        return
    stop, interval = threading.Event(), every

    def poll() -> None:
        while not stop.wait(interval):
            try:
                reporter.update(*read())
            except Exception:  # noqa: BLE001 - a progress line is never worth a failed run
                return

    thread = threading.Thread(target=poll, name="p8-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def is_terminal() -> bool:
    """Whether stderr is a terminal a line can be redrawn in."""
    return sys.stderr.isatty()
