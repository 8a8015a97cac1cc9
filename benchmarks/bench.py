"""End-to-end speed and memory of `p8 run` against the bare model, in one run.

    python benchmarks/bench.py [--images DIR] [--sizes 2000,8000,0] [--out FILE.json]

For each size N (0 = every image) it links the first N images (sorted by path) into a temp
folder, runs `p8 run` there in a subprocess while sampling the resident memory of its process
tree (driver JVM, Python driver, Python workers), and reads the per-stage seconds from the run
manifest. The bare model is Keras `predict` on already-decoded 224x224 batches of 64, in one
process using every core, with the same weights, measured right before and after each run
(the ratio uses their mean). Numbers are measured, never asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from p8lib.artifacts import MANIFEST, RunManifest

ROOT = Path(__file__).resolve().parents[1]


class BareModel:
    """Keras predict on decoded batches of 64 in this process (all cores), after a warm-up.

    The machine's speed drifts (shared hosts), so it is measured right before and right after
    each pipeline run, and that run's ratio uses the mean of the two.
    """

    def __init__(self, image_dir: Path, *, image_size: int = 224, n: int = 1280) -> None:
        from p8lib.featurize import build_model, embed, load_image, resolve_weights

        self.embed = embed
        self.model = build_model(resolve_weights("imagenet"), image_size, threads=os.cpu_count())
        files = sorted(image_dir.rglob("*.jpg"))[:n]
        self.images = np.stack([load_image(f.read_bytes(), image_size) for f in files])
        embed(self.model, self.images[:64])  # warm-up: graph building, allocations

    def images_per_second(self) -> float:
        start = time.perf_counter()
        self.embed(self.model, self.images, batch_size=64)
        return len(self.images) / (time.perf_counter() - start)


def _tree_rss(pid: int) -> dict[str, int]:
    """Resident bytes of a process and its descendants, by kind."""
    children: dict[int, list[int]] = {}
    names: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        children.setdefault(ppid, []).append(int(entry.name))
        names[int(entry.name)] = cmd
    totals = {"driver_jvm": 0, "python_driver": 0, "python_workers": 0}
    stack = [pid]
    while stack:
        current = stack.pop()
        stack.extend(children.get(current, []))
        try:
            rss_pages = int(Path(f"/proc/{current}/statm").read_text().split()[1])
        except OSError:
            continue
        rss = rss_pages * os.sysconf("SC_PAGE_SIZE")
        cmd = names.get(current, "")
        if "java" in cmd.split(" ")[0]:
            totals["driver_jvm"] += rss
        elif current == pid:
            totals["python_driver"] += rss
        elif "python" in cmd:
            totals["python_workers"] += rss
    return totals


def run_pipeline(images: Path, output: Path, extra: list[str]) -> dict[str, Any]:
    """`p8 run` in a subprocess: wall seconds, peak memory by kind, the manifest."""
    cmd = [sys.executable, "-m", "p8lib.cli", "run", "--images", str(images)]
    cmd += ["--output", str(output), "--mode", "overwrite", *extra]
    peak: dict[str, int] = {"driver_jvm": 0, "python_driver": 0, "python_workers": 0, "total": 0}
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            rss = _tree_rss(proc.pid)
            for key, value in rss.items():
                peak[key] = max(peak[key], value)
            peak["total"] = max(peak["total"], sum(rss.values()))
            time.sleep(0.5)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    stdout, _ = proc.communicate()
    wall = time.perf_counter() - start
    done.set()
    sampler.join()
    if proc.returncode != 0:
        raise SystemExit(f"p8 run failed ({proc.returncode}): {stdout.decode()}")
    manifest = RunManifest.from_json((output / MANIFEST).read_text(), where=str(output))
    return {
        "wall_seconds": round(wall, 2),
        "peak_rss_gb": {k: round(v / 1e9, 2) for k, v in peak.items()},
        "manifest": manifest,
    }


def link_first(source: Path, n: int, dest: Path) -> int:
    """Hard-link (or copy) the first ``n`` images under ``source`` into ``dest``."""
    files = sorted(source.rglob("*.jpg"))
    files = files[:n] if n else files
    for f in files:
        target = dest / f.relative_to(source)
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(f, target)
        except OSError:
            shutil.copy(f, target)
    return len(files)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_images = Path(os.environ.get("FRUITS360_DIR", "")) / "Test"
    parser.add_argument("--images", type=Path, default=default_images)
    parser.add_argument("--sizes", default="2000,8000,0", help="image counts; 0 = all")
    parser.add_argument("--limit", type=int, help="shorthand for --sizes N")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "bench.json")
    parser.add_argument("--run-args", default="", help="extra `p8 run` arguments, quoted")
    args = parser.parse_args()
    if not args.images.is_dir():
        parser.error(f"no images at {args.images}: set FRUITS360_DIR or pass --images")
    sizes = [args.limit] if args.limit else [int(s) for s in args.sizes.split(",")]

    bare_model = BareModel(args.images)
    rows = []
    for size in sizes:
        bare_before = bare_model.images_per_second()
        (ROOT / "results").mkdir(exist_ok=True)
        with tempfile.TemporaryDirectory(dir=ROOT / "results") as tmp:
            images = Path(tmp) / "images"
            n = link_first(args.images, size, images)
            measured = run_pipeline(images, Path(tmp) / "out", args.run_args.split())
        bare_after = bare_model.images_per_second()
        bare = (bare_before + bare_after) / 2
        print(f"bare model: {bare_before:.1f} before, {bare_after:.1f} after", flush=True)
        manifest = measured.pop("manifest")
        assert isinstance(manifest, RunManifest)
        seconds = manifest.seconds
        row = {
            "images": n,
            "wall_seconds": measured["wall_seconds"],
            "pipeline_seconds": seconds["total"],
            "stage_seconds": {k: v for k, v in seconds.items() if k != "total"},
            "images_per_second": round(n / measured["wall_seconds"], 1),
            "featurize_images_per_second": round(n / seconds["featurize"], 1),
            "bare_model_images_per_second": round(bare, 1),
            "bare_model_before_after": [round(bare_before, 1), round(bare_after, 1)],
            "ratio_to_bare_model": round(n / measured["wall_seconds"] / bare, 3),
            "featurize_ratio_to_bare_model": round(n / seconds["featurize"] / bare, 3),
            "core_ms_per_image": round(1000 * measured["wall_seconds"] * os.cpu_count() / n, 2),
            "peak_rss_gb": measured["peak_rss_gb"],
            "k": manifest.pca.k,
            "featurized": manifest.counts.featurized,
        }
        rows.append(row)
        print(json.dumps(row), flush=True)

    report = {
        "machine": {
            "cores": os.cpu_count(),
            "python": platform.python_version(),
            "cpu": platform.processor() or platform.machine(),
        },
        "run_args": args.run_args,
        "runs": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    header = ["images", "wall s", "img/s", "bare img/s", "ratio", "feat img/s", "core ms/img"]
    header += ["peak GB"]
    print("\n" + " ".join(f"{h:>11}" for h in header) + "  stages (s)")
    for r in rows:
        stages = " ".join(f"{k}={v:.0f}" for k, v in r["stage_seconds"].items())
        keys = ["images", "wall_seconds", "images_per_second", "bare_model_images_per_second"]
        keys += ["ratio_to_bare_model"]
        keys += ["featurize_images_per_second", "core_ms_per_image"]
        cells = [r[k] for k in keys] + [r["peak_rss_gb"]["total"]]
        print(" ".join(f"{c:>11}" for c in cells) + f"  {stages}")
    print(f"report: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
