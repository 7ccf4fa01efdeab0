"""Time the README's first command, `make demo`, as a new user runs it: fresh clone, no venv, no cache.

    python bench/demo.py [--keep DIR] [--no-ablation]

1. `git clone` of this checkout's HEAD into a temporary folder;
2. `make demo` there under a clean environment (only HOME and a system PATH, no pip cache), so
   the run creates the virtual environment, installs everything, builds the demo corpus,
   extracts it and trains cmaf; timed end to end;
3. `make demo` again: Snakemake must find nothing to do, so only training runs; timed;
4. unless --no-ablation: `fuse ablate --cache data/feats.zarr` (cmaf fused vs each modality
   alone, seeds 0, 1, 2) in the clone, the check tests/test_demo_e2e.py makes; and the same
   with `--normalisation global` (what `auto` normalisation avoids on this corpus).

Writes bench/results/demo.json (timings, the printed metrics, the ablation table, machine).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # bench.provenance
RESULT = ROOT / "bench" / "results" / "demo.json"
CLEAN_ENV = {"HOME": os.environ.get("HOME", "/root"), "PATH": "/usr/local/bin:/usr/bin:/bin", "PIP_NO_CACHE_DIR": "1", "LANG": "C.UTF-8"}


def timed(command: list[str], cwd: Path, log: Path) -> tuple[float, str]:
    started = time.perf_counter()
    with open(log, "w") as handle:
        done = subprocess.run(command, cwd=cwd, env=CLEAN_ENV, stdout=handle, stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - started
    text = log.read_text()
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({done.returncode}); see {log}:\n{text[-3000:]}")
    return round(seconds, 1), text


def metrics_table(output: str) -> str:
    """The table `fuse train` prints (from its header line to the last metric row)."""
    match = re.search(r"^metric\s+dev\s+test\n(?:\w+\s+[\d.]+\s+[\d.]+\n)+", output, flags=re.M)
    return match.group(0).rstrip() if match else ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep", type=Path, help="clone into this (new) folder and keep it")
    parser.add_argument("--no-ablation", action="store_true", help="skip the fused-vs-single-modality check")
    args = parser.parse_args()
    from bench.provenance import UNCOMMITTED, commit_label

    label = commit_label()
    commit, dirty = label.removesuffix(UNCOMMITTED), label.endswith(UNCOMMITTED)
    parent = args.keep.parent if args.keep else Path(tempfile.mkdtemp(prefix="emofuse-demo-"))
    clone = args.keep or parent / "emofuse"
    if clone.exists():
        raise SystemExit(f"{clone} exists; give a new folder")
    parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    try:
        first_s, first = timed(["make", "demo"], clone, parent / "first.log")
        print(f"first make demo: {first_s} s", flush=True)
        second_s, second = timed(["make", "demo"], clone, parent / "second.log")
        print(f"second make demo: {second_s} s", flush=True)
        extraction_skipped = "Nothing to be done" in second
        elapsed = re.search(r"Elapsed time: (\d+):(\d+):([\d.]+)", first)
        result = {
            "command": "python bench/demo.py",
            "commit": label,
            "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
            "first_run": {
                "what": "fresh clone, no .venv, no cache, no pip cache: venv + installs + demo corpus + snakemake extract --cores 8 + fuse train",
                "wall_seconds": first_s,
                "snakemake_elapsed_seconds": round(int(elapsed.group(1)) * 3600 + int(elapsed.group(2)) * 60 + float(elapsed.group(3)), 1) if elapsed else None,
                "metrics_table": metrics_table(first),
                "plots": re.findall(r"^  (runs/\S+\.png)$", first, flags=re.M),
            },
            "second_run": {"wall_seconds": second_s, "extraction_skipped": extraction_skipped, "run_folder": (re.findall(r"^metrics: (\S+)$", second, flags=re.M) or [None])[0]},
        }
        if not args.no_ablation:
            started = time.perf_counter()
            _, ablation_out = timed([".venv/bin/fuse", "ablate", "--cache", "data/feats.zarr", "--seeds", "0,1,2", "--out", "runs/ablation"], clone, parent / "ablation.log")
            report = json.loads((clone / "runs" / "ablation" / "ablation.json").read_text())
            result["ablation"] = {
                "command": "fuse ablate --cache data/feats.zarr --seeds 0,1,2",
                "wall_seconds": round(time.perf_counter() - started, 1),
                "table": (clone / "runs" / "ablation" / "ablation.md").read_text().strip(),
                "test_weighted_f1_mean": {arm: round(v["test"]["weighted_f1"], 4) for arm, v in report["means"].items()},
                "test_weighted_f1_per_seed": {arm: [round(v, 4) for v in a["splits"]["test"]["weighted_f1"]] for arm, a in report["arms"].items()},
                "fusion_margin": round(report["fusion_margin"], 4),
                "fusion_beats_every_modality": report["fusion_beats_every_modality"],
            }
            # the same with global normalisation: why `auto` picks per-speaker statistics here
            _, _ = timed([".venv/bin/fuse", "ablate", "--cache", "data/feats.zarr", "--seeds", "0,1,2", "--normalisation", "global", "--out", "runs/ablation-global"], clone, parent / "ablation-global.log")
            report = json.loads((clone / "runs" / "ablation-global" / "ablation.json").read_text())
            result["ablation_global_normalisation"] = {
                "command": "fuse ablate --cache data/feats.zarr --seeds 0,1,2 --normalisation global",
                "table": (clone / "runs" / "ablation-global" / "ablation.md").read_text().strip(),
                "test_weighted_f1_per_seed": {arm: [round(v, 4) for v in a["splits"]["test"]["weighted_f1"]] for arm, a in report["arms"].items()},
                "fusion_beats_every_modality": report["fusion_beats_every_modality"],
            }
        RESULT.parent.mkdir(parents=True, exist_ok=True)
        RESULT.write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n")
        print(json.dumps(result, indent=1, ensure_ascii=False))
        print(f"wrote {RESULT}")
    finally:
        if not args.keep:
            shutil.rmtree(parent, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
