"""EmoDB benchmark: openSMILE extraction through the workflow, then leave-one-speaker-out training.

    python benchmarks/emodb/run.py [--data ../shared/data/emodb] [--seeds 1,2,3] [--fresh] [--jobs 1]
                                   [--systems NAME,NAME] [--out results.json]

1. Extraction: `snakemake extract --cores 2` on config.yaml's `extract` block: eGeMAPSv02
   low-level descriptors (25-d at 100 Hz) and functionals (88-d, one row) and the ComParE 2016
   functionals (6373-d, one row) with opensmile at the files' native 22.05 kHz (the encoder's
   default), plus both functionals sets from audio resampled to 16 kHz for the SVM reference,
   into benchmarks/emodb/work/emodb.zarr (reused when up to date; `--fresh` redoes everything).
   work/ is reused only while the code that made it is unchanged (benchmarks.common.reuse_or_clear:
   a change to the trainer retrains, one to extraction re-extracts; results.json says which).
2. Folds: one per speaker. Fold k: test = speaker k, train = the other seven. The split view
   has no dev split, so the trainer carves one: the split is speaker-independent, so dev is
   one whole training speaker (fuse.data.selection, fixed seed; issue 18), and early stopping
   and the best epoch are chosen on an unseen speaker, as the test is. Each fold's split is
   written into a split view of the cache (fuse.data.split_view; the feature sets are symbolic
   links, nothing is re-extracted), and config.yaml's `systems` x --seeds run as one
   `fuse sweep` on it.
   With `train.refit_selected`, the system chosen by dev UAR (step 4) is then trained again
   on each fold's train + dev speakers with the same settings (`fit_on: train+dev`; only for a
   system that keeps its last epoch, since dev no longer picks one) and that refit is what
   the target is checked on: the SVM below trains on all seven non-test speakers too.
3. Reference: a linear SVM (scikit-learn, C=1) on each functionals set and the same folds, trained on
   all seven non-test speakers (the trainer's train + dev), with global or per-speaker
   standardisation; it reproduces the literature's anchor setting on this copy of EmoDB (8 of
   10 speakers, 2 s clips), so the anchors and our numbers can be compared on equal data.
4. results.json beside this file (or --out): UAR and macro F1 on the held-out speaker, mean ±
   std over folds x seeds, per-fold values, timings, machine, commit and command, anchors,
   target. The system checked against the target is the one with the best mean UAR on the
   folds' dev speakers, never on the test speakers.
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
from benchmarks.common import machine, reuse_or_clear, run_extraction, run_record  # noqa: E402

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "emodb"
REPORTED = ("uar", "macro_f1", "accuracy")
SHORT = {
    "audio.egemaps-functionals": "eGeMAPS functionals",
    "audio.egemaps-lld": "eGeMAPS LLD",
    "audio.compare-functionals": "ComParE functionals",
    "audio.egemaps-functionals-16k": "eGeMAPS functionals, 16 kHz",
    "audio.compare-functionals-16k": "ComParE functionals, 16 kHz",
}
SVM_FEATURES = ("audio.egemaps-functionals", "audio.compare-functionals", "audio.egemaps-functionals-16k", "audio.compare-functionals-16k")


def speaker_folds(speakers: np.ndarray) -> list[dict]:
    """Leave one speaker out: test = that speaker, train = the others (dev is carved by the trainer)."""
    order = sorted(set(speakers.tolist()))
    if len(order) < 3:
        raise SystemExit(f"need at least 3 speakers for train/dev/test folds, found {order}")
    return [{"test_speaker": test, "splits": np.where(speakers == test, "test", "train").tolist()} for test in order]


def carved_dev_speakers(view_path: Path) -> tuple[list[str], str]:
    """The speakers the trainer's dev carve takes from a fold's view, and its note."""
    from cache_schema import open_cache
    from fuse.data.selection import dialogue_keys, resolve_splits, speaker_keys

    view = open_cache(view_path)
    columns = {c: view.column(c) for c in ("split", "dataset", "dialogue_id", "speaker")}
    splits = resolve_splits(columns["split"], dialogue_keys(columns), speakers=speaker_keys(columns))
    if splits.dev_rule != "speakers":
        raise SystemExit(f"{view_path}: the dev carve did not take whole speakers: {splits.note}")
    return sorted(set(np.asarray(columns["speaker"], dtype=object)[splits.dev].astype(str).tolist())), splits.note


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
    for name in SVM_FEATURES:
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


def refit_on_train_and_dev(system: str, options: dict, base: dict, seeds: list[int], folds: list[dict], work: Path, jobs: int) -> dict:
    """The selected system trained again on each fold's train + dev speakers (`fit_on:
    train+dev`), its settings unchanged, scored on the test speaker: the last step of choosing
    settings on dev (scikit-learn's refit). Only a system that keeps its last epoch can be
    refit (dev no longer chooses the epoch); {"note"} alone otherwise."""
    from fuse.sweep import expand, run_sweep

    if {**base, **options}.get("select_epoch", "best") != "last":
        return {"note": f"not refit: {system} picks its epoch on the dev speaker (select_epoch best)"}
    plan = expand({"base": base, "runs": [{**options, "fit_on": "train+dev", "seed": seed} for seed in seeds]}, source=str(HERE / "config.yaml"))
    scores = {k: [] for k in REPORTED}
    per_fold = []
    for fold in folds:
        name = fold["name"]
        out = work / "folds" / name / "refit"
        result = run_sweep(plan, fold["view"], out, jobs=jobs, echo=lambda *_: None)
        if result.failed:
            raise SystemExit(f"fold {name}: refit runs failed: {result.failed}")
        fold_uar = []
        for run in plan.runs:
            test = json.loads((out / run.name / "metrics.json").read_text())["splits"]["test"]
            for m in REPORTED:
                scores[m].append(test[m])
            fold_uar.append(test["uar"])
        per_fold.append(round(float(np.mean(fold_uar)), 4))
        print(f"  refit {system} on train+dev, fold {name}: UAR {np.mean(fold_uar):.3f}", flush=True)
    return {"note": f"{system} (selected by dev UAR) refit on each fold's train + dev speakers, same settings and epochs",
            "scores": scores, "per_fold": per_fold}


def summarise(values: list[float]) -> dict:
    array = np.asarray(values, dtype=np.float64)
    return {"mean": round(float(array.mean()), 4), "std": round(float(array.std(ddof=1)) if len(array) > 1 else 0.0, 4), "values": [round(float(v), 4) for v in values]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="EmoDB folder (holding wav/) or the wav folder")
    parser.add_argument("--seeds", default="1", help="comma-separated seeds (each fold is trained once per seed)")
    parser.add_argument("--jobs", type=int, default=1, help="sweep worker processes per fold")
    parser.add_argument("--fresh", action="store_true", help="delete work/ first (re-extract, retrain)")
    parser.add_argument("--systems", default="", help="comma-separated names of config.yaml's systems to run [all]")
    parser.add_argument("--out", type=Path, default=HERE / "results.json", help="results file [results.json beside run.py]")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    wav_root = args.data / "wav" if (args.data / "wav").is_dir() else args.data
    if not any(wav_root.glob("*.wav")):
        raise SystemExit(f"no EmoDB wav files in {wav_root} (give --data)")
    config = yaml.safe_load((HERE / "config.yaml").read_text())
    systems = dict(config["train"]["systems"])
    if args.systems:
        wanted = [s.strip() for s in args.systems.split(",") if s.strip()]
        unknown = [s for s in wanted if s not in systems]
        if unknown:
            raise SystemExit(f"--systems: no system {unknown[0]!r} in config.yaml (systems: {', '.join(systems)})")
        systems = {s: systems[s] for s in wanted}
    work = HERE / "work"
    if args.fresh and work.exists():
        shutil.rmtree(work)
    record = run_record()
    reuse = reuse_or_clear(work, record, trained=[work / "folds"], benchmark=HERE)

    started = time.perf_counter()
    extraction = run_extraction(config, wav_root, work, "emodb.zarr")
    print(f"extraction: {extraction['wall_seconds']} s ({'ran' if extraction['ran'] else 'cache up to date'})", flush=True)

    from cache_schema import open_cache
    from fuse.data.split_view import split_view
    from fuse.sweep import expand, run_sweep

    speakers = np.asarray(open_cache(extraction["cache"]).column("speaker"), dtype=object).astype(str)
    folds = speaker_folds(speakers)
    # One `runs:` sweep per fold: every system x seed; entries[i] is plan.runs[i].
    entries = [(name, {**options, "seed": seed}) for name, options in systems.items() for seed in seeds]
    plan = expand({"base": config["train"]["base"], "runs": [e for _, e in entries]}, source=str(HERE / "config.yaml"))

    train_started = time.perf_counter()
    scores: dict[str, dict[str, list[float]]] = {}
    per_fold: dict[str, dict[str, list[float]]] = {}
    dev_scores: dict[str, list[float]] = {}  # the folds' dev speakers: used to pick the reported system
    best_epochs: dict[str, list[int]] = {}
    run_seconds: dict[str, list[float]] = {}
    for fold in folds:
        name = f"speaker-{fold['test_speaker']}"
        view = split_view(extraction["cache"], work / "folds" / f"{name}.zarr", fold["splits"])
        fold["name"], fold["view"] = name, view  # the refit trains on the same view
        fold["dev_speakers"], fold["dev_note"] = carved_dev_speakers(view)
        print(f"fold {name}: test speaker {fold['test_speaker']}, carved dev speaker(s) {', '.join(fold['dev_speakers'])}", flush=True)
        fold_started = time.perf_counter()
        result = run_sweep(plan, view, work / "folds" / name / "sweep", jobs=args.jobs, echo=lambda *_: None)
        if result.failed:
            raise SystemExit(f"fold {name}: runs failed: {result.failed}")
        for (system, _), run in zip(entries, plan.runs):
            metrics_file = json.loads((work / "folds" / name / "sweep" / run.name / "metrics.json").read_text())
            run_splits = metrics_file["splits"]
            metrics, dev_uar = run_splits["test"], run_splits["dev"]["uar"]
            dev_scores.setdefault(system, []).append(dev_uar)
            for m in REPORTED:
                scores.setdefault(system, {k: [] for k in REPORTED})[m].append(metrics[m])
            per_fold.setdefault(system, {}).setdefault(fold["test_speaker"], []).append(metrics["uar"])
            if metrics_file.get("best_epoch") is not None:
                best_epochs.setdefault(system, []).append(int(metrics_file["best_epoch"]))
        print(f"  ({time.perf_counter() - fold_started:.0f} s) " + ", ".join(
            f"{s}: UAR {np.mean(v['uar'][-len(seeds):]):.3f} dev {np.mean(dev_scores[s][-len(seeds):]):.3f}" for s, v in scores.items()), flush=True)
    # The reported system is chosen by the mean UAR of the folds' dev speakers, never by test,
    # among the systems whose dev score did not also pick their epoch, when any ran (config.yaml).
    unbiased = [s for s in scores if {**config["train"]["base"], **systems[s]}.get("select_epoch", "best") == "last"]
    best = max(unbiased or list(scores), key=lambda s: np.mean(dev_scores[s]))
    refit = None
    if config["train"].get("refit_selected"):
        refit = refit_on_train_and_dev(best, systems[best], config["train"]["base"], seeds, folds, work, args.jobs)
    train_seconds = time.perf_counter() - train_started

    svm = svm_reference(extraction["cache"], folds)
    results = {}
    for system, values in scores.items():
        stats = {m: summarise(v) for m, v in values.items()}
        results[system] = {
            "options": systems[system],
            **{m: f"{stats[m]['mean']:.4f} ± {stats[m]['std']:.4f}" for m in REPORTED},
            "dev_uar (selection)": round(float(np.mean(dev_scores[system])), 4),
            "uar_per_fold (mean over seeds)": [round(float(np.mean(per_fold[system][f["test_speaker"]])), 4) for f in folds],
            "best_epoch (mean)": round(float(np.mean(best_epochs[system])), 1) if best_epochs.get(system) else None,
        }
    reference = {k: {m: f"{v[m]['mean']:.4f} ± {v[m]['std']:.4f}" for m in v} for k, v in svm.items()}
    achieved = float(np.mean(scores[best]["uar"]))
    reported = best
    if refit is not None and "scores" in refit:
        reported = f"{best}, refit on train+dev"
        achieved = float(np.mean(refit["scores"]["uar"]))
        stats = {m: summarise(v) for m, v in refit["scores"].items()}
        results[reported] = {
            "options": {**systems[best], "fit_on": "train+dev"},
            **{m: f"{stats[m]['mean']:.4f} ± {stats[m]['std']:.4f}" for m in REPORTED},
            "dev_uar (selection)": None,
            "uar_per_fold (mean over seeds)": refit["per_fold"],
            "best_epoch (mean)": None,
        }
    target = config["target"]
    out = {
        **record,
        "work_reuse": reuse,
        "machine": machine(),
        "data": f"EmoDB ({wav_root}): {extraction['n_utterances']} utterances, speakers {sorted(set(speakers.tolist()))}",
        "protocol": (
            f"leave one speaker out ({len(folds)} folds); train = the other {len(set(speakers.tolist())) - 1} speakers, of which "
            "the trainer carves one whole speaker as dev (early stopping, best epoch); mean ± sample std over folds"
            + (f" x seeds {seeds}" if len(seeds) > 1 else f", seed {seeds[0]}")
        ),
        "base_options": config["train"]["base"],
        "folds": [{"test_speaker": f["test_speaker"], "dev_speakers": f["dev_speakers"]} for f in folds],
        "dev_carve_note (fold 1)": folds[0]["dev_note"],
        "results": results,
        "svm_reference_same_folds": reference,
        "target": {
            "metric": "UAR (held-out speaker)",
            "at_least": target["at_least"],
            "best_system (by dev UAR)": best,
            "selected_among": unbiased or list(scores),
            "reported": reported,
            "refit": None if refit is None else refit["note"],
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
            "jobs": args.jobs,
            "total_wall": round(time.perf_counter() - started, 1),
        },
    }
    args.out.write_text(json.dumps(out, indent=1, ensure_ascii=False) + "\n")
    print(json.dumps(out["results"], indent=1, ensure_ascii=False))
    print(json.dumps(out["svm_reference_same_folds"], indent=1, ensure_ascii=False))
    print(json.dumps(out["target"], indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
