"""Peak memory and time of one training step (forward + backward) vs sequence length, on CPU.

    python bench/attention_memory.py [--threads 2] [--out bench/results/attention_memory.json]

Cases (every one in a fresh subprocess, so its peak resident memory is its own):
- carat, seed 2 sizes (hidden 512, 8 heads, layers 4/3/3, CTC alignment of text, audio and
  video, CTC loss on), batch 64, MOSEI-shaped inputs: 374 GloVe tokens (300-d), L COVAREP frames
  (74-d, 100 Hz) and 0.3 L Facet frames (35-d, 30 Hz), L in 1000, 4000, 10891 (the longest
  COVAREP segment of seed 2 3.2.2), every utterance at full length (no data-layer truncation).
- cmaf cross-modal attention (text <-> audio, 12 heads x 42), batch 8, the same text and audio
  shapes: output_attentions true (explicit maps, the default) and false
  (scaled_dot_product_attention). Explicit maps only at 1000 frames: at 4000 and 10891 they
  would need several GB per map (B x heads x T_text x T_audio x 4 bytes, x2 directions, plus
  softmax and backward copies) on a machine shared with other jobs.
- cmaf with seed 1's video encoder (6 blocks, 504, 12 heads) vs none, seed 1 shapes: batch 4,
  128 text tokens, 500 audio frames and 8 video frames (Table 2) of 768-d features, and the
  same with 300 video frames.

Memory: peak RSS (ru_maxrss) of the step minus the RSS before it (model and inputs built),
in MiB. Time: wall seconds of one step (the first; long steps are not repeated), with
`--threads` intra-op threads. Random inputs; the numbers measure cost, not accuracy.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # bench.provenance
LENGTHS = (1000, 4000, 10891)


def batch_of(shapes: dict[str, tuple[int, int]], batch_size: int, n_classes: int, multi_label: bool):
    import torch

    from fuse.batch import Batch, ModalityInput

    generator = torch.Generator().manual_seed(0)
    modalities = {}
    for name, (length, dim) in shapes.items():
        mask = torch.ones(batch_size, length, dtype=torch.bool)
        modalities[name] = ModalityInput(torch.randn(batch_size, length, dim, generator=generator), mask, mask[:, 0])
    return Batch(
        modalities=modalities,
        index=torch.arange(batch_size),
        label=None if multi_label else torch.arange(batch_size) % n_classes,
        labels_multi=(torch.rand(batch_size, n_classes, generator=generator) > 0.5).float() if multi_label else None,
    )


def run_case(case: dict) -> dict:
    """One training step of the described case, in this process."""
    import torch

    from fuse.models import build_model

    torch.set_num_threads(case["threads"])
    torch.manual_seed(0)
    shapes = {m: tuple(v) for m, v in case["shapes"].items()}
    multi_label = case["model"] == "carat"
    n_classes = 6 if multi_label else 7
    model = build_model(
        case["model"],
        {m: dim for m, (_, dim) in shapes.items()},
        n_classes,
        "multi_label" if multi_label else "single_label",
        **case["model_config"],
    ).train()
    batch = batch_of(shapes, case["batch_size"], n_classes, multi_label)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    output = model(batch)
    output.loss.backward()
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "peak_step_mib": round((peak - before) / 1024, 1),
        "peak_process_mib": round(peak / 1024, 1),
        "seconds": round(seconds, 2),
        "parameters": sum(p.numel() for p in model.parameters()),
        "loss_parts": sorted(output.loss_parts),
    }


def cases(threads: int) -> list[dict]:
    out = []
    for length in LENGTHS:
        out.append(
            {
                "name": f"carat audio={length}",
                "model": "carat",
                "batch_size": 64,
                "shapes": {"text": (374, 300), "audio": (length, 74), "video": (round(0.3 * length), 35)},
                "model_config": {},
            }
        )
    for length in LENGTHS:
        for maps in ((True, False) if length == LENGTHS[0] else (False,)):
            out.append(
                {
                    "name": f"cmaf attention audio={length} output_attentions={str(maps).lower()}",
                    "model": "cmaf",
                    "batch_size": 8,
                    "shapes": {"text": (374, 300), "audio": (length, 74)},
                    "model_config": {"output_attentions": maps},
                }
            )
    for frames in (8, 300):
        for blocks in (0, 6):
            out.append(
                {
                    "name": f"cmaf video_encoder_blocks={blocks} video frames={frames}",
                    "model": "cmaf",
                    "batch_size": 4,
                    "shapes": {"text": (128, 768), "audio": (500, 768), "video": (frames, 768)},
                    "model_config": {"video_encoder_blocks": blocks},
                }
            )
    for case in out:
        case["threads"] = threads
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--only", default=None, help="run only cases whose name contains this")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "attention_memory.json"))
    ap.add_argument("--case", default=None, help=argparse.SUPPRESS)  # internal: one case as JSON
    args = ap.parse_args()
    if args.case:
        print(json.dumps(run_case(json.loads(args.case))))
        return

    from bench.provenance import UNCOMMITTED, commit_label

    label = commit_label()
    commit, dirty = label.removesuffix(UNCOMMITTED), label.endswith(UNCOMMITTED)
    results = []
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for case in cases(args.threads):
        if args.only and args.only not in case["name"]:
            continue
        done = subprocess.run(
            [sys.executable, __file__, "--case", json.dumps(case)], cwd=ROOT, env=env, capture_output=True, text=True
        )
        if done.returncode:
            measured = {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}"}
        else:
            measured = json.loads(done.stdout.strip().splitlines()[-1])
        row = {**{k: v for k, v in case.items() if k != "threads"}, **measured}
        print(json.dumps(row), flush=True)
        results.append(row)
    record = {
        "command": "python " + " ".join([str(Path(sys.argv[0]).relative_to(ROOT) if Path(sys.argv[0]).is_absolute() else sys.argv[0]), *sys.argv[1:]]),
        "commit": commit,
        "dirty": dirty,
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "threads": args.threads,
            "python": platform.python_version(),
            "torch": __import__("torch").__version__,
            "platform": platform.platform(),
        },
        "notes": "Memory: peak RSS of one forward+backward step minus RSS before it (MiB). Time: that one step (s).",
        "results": results,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
