"""EmoDB benchmark: eGeMAPS extraction through the workflow, then leave-one-speaker-out training.

    python benchmarks/emodb/run.py [--data ../shared/data/emodb] [--seeds 1] [--fresh] [--jobs 1]

1. Extraction: `snakemake extract --cores 2` on config.yaml's `extract` block: eGeMAPSv02
   low-level descriptors (25-d at 100 Hz) and functionals (88-d, one row) and the ComParE 2016
   functionals (6373-d, one row) with opensmile, into
   benchmarks/emodb/work/emodb.zarr (reused when up to date; `--fresh` redoes everything).
2. Folds: one per speaker. Fold k: test = speaker k, dev = the next speaker (sorted order,
   wrapping), train = the other six. Each fold's split is written into a split view of the
   cache (fuse.data.split_view; the feature sets are symbolic links, nothing is re-extracted),
   and config.yaml's `train` grid x --seeds runs as one `fuse sweep` on it.
3. Reference: a linear SVM (scikit-learn, C=1) on each functionals set and the same folds, trained on
   train + dev, with global or per-speaker standardisation; it reproduces the literature's
   anchor setting on this copy of EmoDB (8 of 10 speakers, 2 s clips), so the anchors and our
   numbers can be compared on equal data.
4. results.json beside this file: UAR and macro F1 on the held-out speaker, mean ± std over
   folds (x seeds), per-fold values, timings, machine, anchors, target. The system checked
   against the target is the one with the best mean UAR on the folds' dev speakers.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(ROOT))
from benchmarks.common import machine, run_extraction  # noqa: E402

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "emodb"
REPORTED = ("uar", "macro_f1", "accuracy")
SHORT = {"audio.egemaps-functionals": "functionals", "audio.egemaps-lld": "LLD", "audio.compare-functionals": "ComParE functionals"}


def speaker_folds(speakers: np.ndarray) -> list[dict]:
    """Leave one speaker out; the next speaker (sorted, wrapping) is the fold's dev split."""
    order = sorted(set(speakers.tolist()))
    if len(order) < 3:
        raise SystemExit(f"need at least 3 speakers for train/dev/test folds, found {order}")
    folds = []
    for k, test in enumerate(order):
        dev = order[(k + 1) % len(order)]
        splits = np.where(speakers == test, "test", np.where(speakers == dev, "dev", "train"))
        folds.append({"test_speaker": test, "dev_speaker": dev, "splits": splits.tolist()})
    return folds


def svm_reference(cache_path: str, folds: list[dict]) -> dict:
    """Linear SVM (C=1) on each functionals feature set per fold, global vs per-speaker
    standardisation, scored with the trainer's own metrics (fuse.metrics)."""
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    from cache_schema import open_cache
    from fuse.metrics import single_label_metrics

    cache = open_cache(cache_path)
    labels = np.asarray(cache.column("label"))
    names = list(cache.table.label_names)
    speakers = np.asarray(cache.column("speaker"), dtype=object).astype(str)
    out = {}
    for name in ("audio.egemaps-functionals", "audio.compare-functionals"):
        if name not in cache.feature_names():
            continue
        fs = cache[name]
        if not fs.present.all() or (fs.lengths != 1).any():
            raise SystemExit(f"{name} should hold exactly one row per utterance")
        features, _ = fs.block(0, len(fs))
        features = features.astype(np.float64)
        per_speaker = features.copy()
        for s in set(speakers.tolist()):  # each speaker's own statistics, labels never used
            rows = speakers == s
            per_speaker[rows] = StandardScaler().fit_transform(features[rows])
        for mode in ("global", "speaker"):
            scores = {"uar": [], "macro_f1": []}
            for fold in folds:
                splits = np.asarray(fold["splits"])
                fit = splits != "test"
                x = per_speaker if mode == "speaker" else StandardScaler().fit(features[fit]).transform(features)
                predicted = SVC(kernel="linear", C=1.0).fit(x[fit], labels[fit]).predict(x[~fit])
                metrics = single_label_metrics(labels[~fit], predicted, names)
                for m in scores:
                    scores[m].append(metrics[m])
            out[f"SVM {SHORT[name]} / {mode}"] = {m: summarise(v) for m, v in scores.items()}
    return out


def summarise(values: list[float]) -> dict:
    array = np.asarray(values, dtype=np.float64)
    return {"mean": round(float(array.mean()), 4), "std": round(float(array.std(ddof=1)) if len(array) > 1 else 0.0, 4), "values": [round(float(v), 4) for v in values]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="EmoDB folder (holding wav/) or the wav folder")
    parser.add_argument("--seeds", default="1", help="comma-separated seeds (each fold is trained once per seed)")
    parser.add_argument("--jobs", type=int, default=1, help="sweep worker processes per fold")
    parser.add_argument("--fresh", action="store_true", help="delete work/ first (re-extract, retrain)")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    wav_root = args.data / "wav" if (args.data / "wav").is_dir() else args.data
    if not any(wav_root.glob("*.wav")):
        raise SystemExit(f"no EmoDB wav files in {wav_root} (give --data)")
    config = yaml.safe_load((HERE / "config.yaml").read_text())
    work = HERE / "work"
    if args.fresh and work.exists():
        shutil.rmtree(work)

    started = time.perf_counter()
    extraction = run_extraction(config, wav_root, work, "emodb.zarr")
    print(f"extraction: {extraction['wall_seconds']} s ({'ran' if extraction['ran'] else 'cache up to date'})", flush=True)

    from cache_schema import open_cache
    from fuse.data.split_view import split_view
    from fuse.sweep import expand, run_sweep

    speakers = np.asarray(open_cache(extraction["cache"]).column("speaker"), dtype=object).astype(str)
    folds = speaker_folds(speakers)
    grid = dict(config["train"]["grid"])
    grid["seed"] = seeds
    plan = expand({"base": config["train"]["base"], "grid": grid}, source=str(HERE / "config.yaml"))

    train_started = time.perf_counter()
    scores: dict[str, dict[str, list[float]]] = {}
    per_fold: dict[str, dict[str, float]] = {}
    dev_scores: dict[str, list[float]] = {}  # the folds' dev speakers: used to pick the reported system
    for fold in folds:
        name = f"speaker-{fold['test_speaker']}"
        view = split_view(extraction["cache"], work / "folds" / f"{name}.zarr", fold["splits"])
        print(f"fold {name}: test speaker {fold['test_speaker']}, dev speaker {fold['dev_speaker']}", flush=True)
        result = run_sweep(plan, view, work / "folds" / name / "sweep", jobs=args.jobs, echo=lambda *_: None)
        if result.failed:
            raise SystemExit(f"fold {name}: runs failed: {result.failed}")
        for run in plan.runs:
            system = f"late / {SHORT[run.options['audio']]} / {run.options['normalisation']}"
            run_splits = json.loads((work / "folds" / name / "sweep" / run.name / "metrics.json").read_text())["splits"]
            metrics, dev_uar = run_splits["test"], run_splits["dev"]["uar"]
            dev_scores.setdefault(system, []).append(dev_uar)
            for m in REPORTED:
                scores.setdefault(system, {k: [] for k in REPORTED})[m].append(metrics[m])
            per_fold.setdefault(system, {}).setdefault(fold["test_speaker"], []).append(metrics["uar"])
        print("  " + ", ".join(f"{s}: UAR {np.mean(v['uar'][-len(seeds):]):.3f}" for s, v in scores.items()), flush=True)
    train_seconds = time.perf_counter() - train_started

    svm = svm_reference(extraction["cache"], folds)
    results = {}
    for system, values in scores.items():
        stats = {m: summarise(v) for m, v in values.items()}
        results[system] = {
            **{m: f"{stats[m]['mean']:.4f} ± {stats[m]['std']:.4f}" for m in REPORTED},
            "dev_uar (selection)": round(float(np.mean(dev_scores[system])), 4),
            "uar_per_fold (mean over seeds)": [round(float(np.mean(per_fold[system][f["test_speaker"]])), 4) for f in folds],
        }
    reference = {k: {m: f"{v[m]['mean']:.4f} ± {v[m]['std']:.4f}" for m in v} for k, v in svm.items()}
    # The reported system is chosen by the mean UAR of the folds' dev speakers, never by test.
    best = max(scores, key=lambda s: np.mean(dev_scores[s]))
    achieved = float(np.mean(scores[best]["uar"]))
    target = config["target"]
    out = {
        "command": "python benchmarks/emodb/run.py --seeds " + ",".join(map(str, seeds)),
        "machine": machine(),
        "data": f"EmoDB ({wav_root}): {extraction['n_utterances']} utterances, speakers {sorted(set(speakers.tolist()))}",
        "protocol": (
            f"leave one speaker out ({len(folds)} folds); dev (early stopping) = the next speaker, train = the other "
            f"{len(set(speakers.tolist())) - 2}; mean ± sample std over folds"
            + (f" x seeds {seeds}" if len(seeds) > 1 else f", seed {seeds[0]}")
        ),
        "fold_test_speakers": [f["test_speaker"] for f in folds],
        "results": results,
        "svm_reference_same_folds": reference,
        "target": {
            "metric": "UAR (held-out speaker)",
            "at_least": target["at_least"],
            "best_system (by dev UAR)": best,
            "achieved": round(achieved, 4),
            "met": achieved >= target["at_least"],
            "gap": round(max(0.0, target["at_least"] - achieved), 4),
        },
        "anchors": config["anchors"],
        "timings_seconds": {
            "extraction_wall": extraction["wall_seconds"],
            "extraction_ran": extraction["ran"],
            "extraction_encode_per_feature_set": extraction["encode_seconds"],
            "training_all_folds_wall": round(train_seconds, 1),
            "runs": len(folds) * len(plan.runs),
            "total_wall": round(time.perf_counter() - started, 1),
        },
    }
    (HERE / "results.json").write_text(json.dumps(out, indent=1, ensure_ascii=False) + "\n")
    print(json.dumps(out["results"], indent=1, ensure_ascii=False))
    print(json.dumps(out["svm_reference_same_folds"], indent=1, ensure_ascii=False))
    print(json.dumps(out["target"], indent=1))
    print(f"wrote {HERE / 'results.json'}")


if __name__ == "__main__":
    main()
