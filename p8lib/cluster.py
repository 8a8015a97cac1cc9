"""A real Spark standalone cluster on this machine: one master, N workers, on 127.0.0.1.

Started from pyspark's own ``spark-class`` (no separate Spark download), each daemon in its
own process group so that it can be stopped, or killed like a lost node, by pid.

    python -m p8lib.cluster start [--workers 2] [--cores 1] [--dir .cache/cluster]
    python -m p8lib.cluster stop [--dir .cache/cluster]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from p8lib.errors import P8Error

MASTER_CLASS = "org.apache.spark.deploy.master.Master"
WORKER_CLASS = "org.apache.spark.deploy.worker.Worker"


def spark_home() -> Path:
    """pyspark's own Spark distribution (jars, bin/spark-class)."""
    import pyspark

    return Path(pyspark.__file__).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class LocalCluster:
    """Master + workers on loopback; ``url`` is the ``spark://`` master URL once started."""

    folder: Path
    workers: int = 2
    cores: int = 1
    memory: str = "4g"
    port: int = 0
    ui_port: int = 0
    pids: dict[str, int] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"spark://127.0.0.1:{self.port}"

    def _env(self) -> dict[str, str]:
        from p8lib.session import ensure_java

        ensure_java()
        env = dict(os.environ)
        env.update(
            {
                "SPARK_HOME": str(spark_home()),
                "SPARK_LOCAL_IP": "127.0.0.1",
                "SPARK_LOG_DIR": str(self.folder / "logs"),
                "SPARK_NO_DAEMONIZE": "1",
                "PYSPARK_PYTHON": env.get("PYSPARK_PYTHON", sys.executable),
            }
        )
        return env

    def _spawn(self, name: str, args: list[str]) -> int:
        log = (self.folder / "logs" / f"{name}.log").open("ab")
        spark_class = spark_home() / "bin" / "spark-class"
        proc = subprocess.Popen(
            ["bash", str(spark_class), *args],
            env=self._env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: kill it and its executors at once
        )
        self.pids[name] = proc.pid
        return proc.pid

    def start(self, timeout: float = 90.0) -> LocalCluster:
        """Start the master and the workers; return once every worker is registered."""
        (self.folder / "logs").mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_port()
        self.ui_port = self.ui_port or free_port()
        self._spawn(
            "master",
            [MASTER_CLASS, "--host", "127.0.0.1", "--port", str(self.port)]
            + ["--webui-port", str(self.ui_port)],
        )
        for i in range(self.workers):
            self.add_worker(i)
        (self.folder / "cluster.json").write_text(json.dumps(self.describe(), indent=2))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = self.state()
            alive = [w for w in state.get("workers", []) if w.get("state") == "ALIVE"]
            if len(alive) >= self.workers:
                return self
            time.sleep(0.5)
        self.stop()
        raise P8Error(f"the Spark cluster did not start in {timeout:.0f} s: see {self.folder}/logs")

    def add_worker(self, i: int) -> None:
        """Start worker ``i`` (``worker-i``; its executors' logs under that folder)."""
        work = self.folder / f"worker-{i}"
        work.mkdir(parents=True, exist_ok=True)
        self._spawn(
            f"worker-{i}",
            [WORKER_CLASS, self.url, "--host", "127.0.0.1", "--cores", str(self.cores)]
            + ["--memory", self.memory, "--webui-port", str(free_port()), "--work-dir", str(work)],
        )

    def state(self) -> dict[str, Any]:
        """The master's JSON status (workers, applications), or {} while it is not up."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.ui_port}/json/", timeout=2) as r:
                return dict(json.load(r))
        except OSError:
            return {}

    def describe(self) -> dict[str, Any]:
        return {"url": self.url, "ui_port": self.ui_port, "pids": self.pids}

    def kill(self, name: str) -> None:
        """SIGKILL a daemon's whole process group (a worker: with its executors): a lost node."""
        pid = self.pids.pop(name)
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def stop(self) -> None:
        """Stop every daemon by pid (TERM, then KILL after a grace period)."""
        for pid in self.pids.values():
            try:
                os.killpg(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 10
        for pid in self.pids.values():
            while time.monotonic() < deadline:
                try:
                    os.killpg(pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.2)
            else:
                try:
                    os.killpg(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        self.pids.clear()

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m p8lib.cluster", description=__doc__)
    parser.add_argument("action", choices=("start", "stop"))
    parser.add_argument("--dir", type=Path, default=Path(".cache/cluster"))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--cores", type=int, default=1)
    parser.add_argument("--memory", default="4g")
    parser.add_argument("--port", type=int, default=7077, help="master port (0: any free one)")
    args = parser.parse_args(argv)
    state_file = args.dir / "cluster.json"
    if args.action == "start":
        if state_file.exists():
            print(f"a cluster may be running ({state_file}): stop it first", file=sys.stderr)
            return 2
        cluster = LocalCluster(
            args.dir, workers=args.workers, cores=args.cores, memory=args.memory, port=args.port
        )
        cluster.start()
        print(
            f"master {cluster.url} (UI http://127.0.0.1:{cluster.ui_port}); stop: make cluster-stop"
        )
        return 0
    if not state_file.exists():
        print(f"no cluster recorded in {state_file}", file=sys.stderr)
        return 2
    described = json.loads(state_file.read_text())
    cluster = LocalCluster(args.dir, pids=dict(described["pids"]))
    cluster.stop()
    state_file.unlink()
    print("cluster stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
