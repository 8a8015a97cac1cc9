"""Scale-out and the driver at scale, measured (never asserted).

    python benchmarks/bench_scale.py cluster [--images DIR] [--n 2000] [--out FILE.json]
    python benchmarks/bench_scale.py listing [--images DIR] [--n 200000] [--out FILE.json]

``cluster``: the same N images through `p8 run` on a standalone cluster on this machine
(pyspark's own master and workers on 127.0.0.1) with 1 worker, then with 2 workers, one core
each; the speed-up of the featurize stage and of the whole run, and from Spark's event log the
speed-up of the images alone: each executor's tasks after its first (the first one also starts
the executor's Python worker and loads the network).

``listing``: a tree of N image files (hard links to the Test images, spread over folders) and
`p8 run --dry-run` on it: its wall time and the driver's peak resident memory.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import ROOT, link_first, run_pipeline  # noqa: E402

from p8lib.cluster import LocalCluster  # noqa: E402


def on_cluster(images: Path, workers: int, scratch: Path) -> dict[str, Any]:
    """One `p8 run` on a fresh standalone cluster of ``workers`` one-core workers."""
    events = scratch / f"events-{workers}"
    events.mkdir()
    log = ["--conf", "spark.eventLog.enabled=true", "--conf", f"spark.eventLog.dir={events}"]
    with LocalCluster(scratch / f"cluster-{workers}", workers=workers, cores=1, memory="3g") as c:
        run = run_pipeline(
            images, scratch / f"out-{workers}", ["--master", c.url, "--k", "10", *log]
        )
    manifest = run.pop("manifest")
    featurize = manifest.seconds["featurize"]
    (event_log,) = events.iterdir()
    return {
        "workers": workers,
        "wall_seconds": run["wall_seconds"],
        "featurize_seconds": featurize,
        "featurize_img_s": round(manifest.counts.images / featurize, 1),
        "after_first_task_img_s": after_first_task(event_log, manifest.plan),
        "plan": manifest.plan,
    }


def after_first_task(event_log: Path, plan: dict[str, Any]) -> float:
    """Images per second of the featurize stage's tasks after each executor's first, summed
    over the executors (each runs its tasks one after another: rate = images / run time)."""
    events = [json.loads(line) for line in event_log.read_text().splitlines()]
    by_stage: dict[int, list[dict[str, Any]]] = {}
    for e in events:
        if e["Event"] == "SparkListenerTaskEnd":
            by_stage.setdefault(e["Stage ID"], []).append(e)

    def run_ms(tasks: list[dict[str, Any]]) -> int:
        return sum(e["Task Metrics"]["Executor Run Time"] for e in tasks)

    # The featurize stage: the one with the planned task count that ran longest.
    stage = max((t for t in by_stage.values() if len(t) == plan["tasks"]), key=run_ms)
    by_executor: dict[str, list[dict[str, Any]]] = {}
    for e in sorted(stage, key=lambda e: e["Task Info"]["Launch Time"]):
        by_executor.setdefault(e["Task Info"]["Executor ID"], []).append(e)
    rate = 0.0
    for tasks in by_executor.values():
        later = tasks[1:]
        if later:
            rate += len(later) * plan["images_per_task"] / (run_ms(later) / 1000)
    return round(rate, 1)


def cluster(images: Path, n: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="p8-bench-cluster-") as tmp:
        scratch = Path(tmp)
        count = link_first(images, n, scratch / "images")
        one, two = (on_cluster(scratch / "images", w, scratch) for w in (1, 2))
    speedup: float = one["featurize_seconds"] / two["featurize_seconds"]
    wall: float = one["wall_seconds"] / two["wall_seconds"]
    steady: float = two["after_first_task_img_s"] / one["after_first_task_img_s"]
    print(f"{count} images: featurize {one['featurize_seconds']:.1f} s on 1 worker, ", end="")
    print(f"{two['featurize_seconds']:.1f} s on 2: speed-up {speedup:.2f}× (whole run {wall:.2f}×)")
    print(
        f"after each executor's first task: {one['after_first_task_img_s']} → "
        f"{two['after_first_task_img_s']} img/s, {steady:.2f}×"
    )
    return {
        "images": count,
        "runs": [one, two],
        "speedup": round(speedup, 2),
        "wall": round(wall, 2),
        "after_first_task_speedup": round(steady, 2),
    }


def link_many(source: Path, n: int, dest: Path) -> int:
    """``n`` hard links to the images under ``source``, in copies of its class folders."""
    files = sorted(source.rglob("*.jpg"))
    for i in range(n):
        original = files[i % len(files)]
        target = dest / f"copy-{i // len(files):03d}" / original.parent.name / original.name
        target.parent.mkdir(parents=True, exist_ok=True)
        os.link(original, target)
    return n


def listing(images: Path, n: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="p8-bench-listing-") as tmp:
        tree = Path(tmp) / "images"
        start = time.perf_counter()
        link_many(images, n, tree)
        made = time.perf_counter() - start
        cmd = ["/usr/bin/time", "-f", "%M %e", sys.executable, "-m", "p8lib.cli", "run"]
        cmd += ["--images", str(tree), "--output", str(Path(tmp) / "out"), "--dry-run"]
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True)
    peak_kb, seconds = done.stderr.strip().splitlines()[-1].split()
    print(done.stdout, end="")
    print(f"{n:,} files (linked in {made:.0f} s): dry run {float(seconds):.1f} s, ", end="")
    print(f"peak {int(peak_kb) / 1e6:.2f} GB")
    return {"files": n, "seconds": float(seconds), "peak_rss_gb": round(int(peak_kb) / 1e6, 2)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=("cluster", "listing"))
    default_images = Path(os.environ.get("FRUITS360_DIR", ROOT.parent / "shared/fruits-360"))
    parser.add_argument("--images", type=Path, default=default_images / "Test")
    parser.add_argument("--n", type=int, help="images (cluster: 2000, listing: 200000)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.what == "cluster":
        result = cluster(args.images, args.n or 2000)
    else:
        result = listing(args.images, args.n or 200_000)
    out = args.out or ROOT / "results" / f"bench-{args.what}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str))
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
