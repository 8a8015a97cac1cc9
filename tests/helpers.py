"""Helpers the tests import."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def p8(
    *args: str, env: dict[str, str] | None = None, timeout: int = 600
) -> subprocess.CompletedProcess[str]:
    """Run the `p8` command in a subprocess; returns the CompletedProcess."""
    return subprocess.run(
        [sys.executable, "-m", "p8lib.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        cwd=ROOT,
    )


def ctrl_c_once_started(
    cmd: list[str], log: Path, *, seen: str, after: float, env: dict[str, str] | None = None
) -> tuple[int, str]:
    """Start ``cmd`` (stderr to ``log``), send SIGINT, as Ctrl-C in a terminal does, ``after``
    seconds past the first time ``seen`` shows on stderr; its exit code and stderr."""
    import signal
    import time

    with log.open("w") as err:
        proc = subprocess.Popen(cmd, cwd=ROOT, stderr=err, start_new_session=True, env=env)
        deadline = time.monotonic() + 120
        while seen not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(after)
        assert proc.poll() is None, f"{cmd[3:5]} ended before it could be interrupted"
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=120)
    return proc.returncode, log.read_text()
