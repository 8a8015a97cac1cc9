"""End-to-end speed and memory of `p8 run` against the bare model, in one run.

    python benchmarks/bench.py [--images DIR] [--sizes 2000,8000,0] [--out FILE.json]

For each size N (0 = every image) it links the first N images (sorted by path) into a temp
folder, runs `p8 run` there in a subprocess while sampling the resident memory of its process
tree (driver JVM, Python driver, Python workers), and reads the per-stage seconds from the run
manifest. The bare engines run on already-decoded 224x224 images in one process using every
core, with the same weights: OpenVINO (the IR p8 runs, at the run's --precision; THROUGHPUT
hint, AsyncInferQueue, batches of 32) and Keras `predict` (batches of 64). Both are measured
right before and after each run (the ratios use their mean). Numbers are measured, never
asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
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

    def __init__(self, images: np.ndarray, *, image_size: int = 224) -> None:
        from p8lib.featurize import build_model, embed, resolve_weights

        self.embed = embed
        self.model = build_model(resolve_weights("imagenet"), image_size, threads=os.cpu_count())
        self.images = images
        embed(self.model, self.images[:64])  # warm-up: graph building, allocations

    def images_per_second(self) -> float:
        start = time.perf_counter()
        self.embed(self.model, self.images, batch_size=64)
        return len(self.images) / (time.perf_counter() - start)


class BareOpenVino:
    """OpenVINO on the same decoded batches (32), all cores, one process: the THROUGHPUT hint
    and an AsyncInferQueue keeping every stream busy; the IR p8 runs, at ``precision``."""

    def __init__(self, images: np.ndarray, *, precision: str, image_size: int = 224) -> None:
        import hashlib

        import openvino as ov

        from p8lib import engine
        from p8lib.featurize import resolve_weights

        weights = resolve_weights("imagenet")
        calibration = engine.Calibration(
            {"source": "bench", "sha256": hashlib.sha256(images[:300].tobytes()).hexdigest()},
            lambda: images[:300],
        )
        network = engine.prepare(
            engine="openvino",
            precision=precision,
            weights_path=weights,
            weights_sha256=hashlib.sha256(weights.read_bytes()).hexdigest(),
            image_size=image_size,
            calibration=calibration,
        )
        # No thread count: p8's own compile with the THROUGHPUT hint over every core.
        self.queue = ov.AsyncInferQueue(engine.load(network))
        self.images = images
        self.images_per_second()  # warm-up

    def images_per_second(self) -> float:
        start = time.perf_counter()
        for i in range(0, len(self.images), 32):
            self.queue.start_async({0: self.images[i : i + 32]})
        self.queue.wait_all()
        return len(self.images) / (time.perf_counter() - start)


def decoded(image_dir: Path, *, n: int = 1280, image_size: int = 224) -> np.ndarray:
    """The first ``n`` images decoded and resized, as the workers do."""
    from p8lib.featurize import load_image

    files = sorted(image_dir.rglob("*.jpg"))[:n]
    return np.stack([load_image(f.read_bytes(), image_size) for f in files])


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


def _option(args: list[str], name: str, default: str) -> str:
    return args[args.index(name) + 1] if name in args else default


def _row(
    n: int, measured: dict[str, Any], before: tuple[float, float], after: tuple[float, float]
) -> dict[str, Any]:
    """One size's line: the run against the mean of the bare engines before and after it."""
    manifest = measured.pop("manifest")
    assert isinstance(manifest, RunManifest)
    seconds, wall = manifest.seconds, measured["wall_seconds"]
    openvino, keras = (before[0] + after[0]) / 2, (before[1] + after[1]) / 2
    return {
        "images": n,
        "wall_seconds": wall,
        "pipeline_seconds": seconds["total"],
        "stage_seconds": {k: v for k, v in seconds.items() if k != "total"},
        "images_per_second": round(n / wall, 1),
        "featurize_images_per_second": round(n / seconds["featurize"], 1),
        "bare_openvino_images_per_second": round(openvino, 1),
        "bare_keras_images_per_second": round(keras, 1),
        "bare_before_after": [[round(v, 1) for v in before], [round(v, 1) for v in after]],
        "ratio_to_bare_openvino": round(n / wall / openvino, 3),
        "ratio_to_bare_keras": round(n / wall / keras, 3),
        "featurize_ratio_to_bare_openvino": round(n / seconds["featurize"] / openvino, 3),
        "core_ms_per_image": round(1000 * wall * (os.cpu_count() or 1) / n, 2),
        "peak_rss_gb": measured["peak_rss_gb"],
        "k": manifest.pca.k,
        "featurized": manifest.counts.featurized,
        "network": manifest.network,
        "plan": manifest.plan,
    }


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

    images = decoded(args.images)
    precision = _option(shlex.split(args.run_args), "--precision", "fp32")
    bare_keras, bare_openvino = BareModel(images), BareOpenVino(images, precision=precision)
    # The converted network is cached on first use: convert it before anything is timed.
    (ROOT / "results").mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(dir=ROOT / "results") as tmp:
        warm = Path(tmp) / "images"
        link_first(args.images, 64, warm)
        run_pipeline(warm, Path(tmp) / "out", [*shlex.split(args.run_args), "--k", "2"])
    rows = []
    for size in sizes:
        before = bare_openvino.images_per_second(), bare_keras.images_per_second()
        (ROOT / "results").mkdir(exist_ok=True)
        with tempfile.TemporaryDirectory(dir=ROOT / "results") as tmp:
            linked = Path(tmp) / "images"
            n = link_first(args.images, size, linked)
            measured = run_pipeline(linked, Path(tmp) / "out", shlex.split(args.run_args))
        after = bare_openvino.images_per_second(), bare_keras.images_per_second()
        bare = f"bare OpenVINO {before[0]:.0f} → {after[0]:.0f}"
        print(f"{bare}, Keras {before[1]:.0f} → {after[1]:.0f} img/s", flush=True)
        rows.append(_row(n, measured, before, after))
        print(json.dumps(rows[-1]), flush=True)

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
    header = ["images", "wall s", "img/s", "bare OV", "ratio", "bare Keras", "ratio K"]
    header += ["feat img/s", "peak GB"]
    print("\n" + " ".join(f"{h:>10}" for h in header) + "  stages (s)")
    for r in rows:
        stages = " ".join(f"{k}={v:.0f}" for k, v in r["stage_seconds"].items())
        keys = ["images", "wall_seconds", "images_per_second", "bare_openvino_images_per_second"]
        keys += ["ratio_to_bare_openvino", "bare_keras_images_per_second", "ratio_to_bare_keras"]
        keys += ["featurize_images_per_second"]
        cells = [r[k] for k in keys] + [r["peak_rss_gb"]["total"]]
        print(" ".join(f"{c:>10}" for c in cells) + f"  {stages}")
    print(f"report: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
