"""Why the demo has 48 dialogues: does fusion visibly help at each corpus size?

    python bench/demo_size.py [--dialogues 20,48] [--seeds 0,1,2]

For each size: the default extraction config (config/config.yaml) with only the demo's size
and the paths changed, `snakemake extract --cores 2` into a temporary folder, then
`fuse ablate` (cmaf fused vs each modality alone, default options, the same seeds). Writes
bench/results/demo_size.json: test-split sizes, weighted F1 per arm and seed, and whether the
fused model beats every single modality in the mean and in each seed.
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

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.provenance import commit_label  # noqa: E402
from benchmarks.common import run_extraction  # noqa: E402

RESULT = ROOT / "bench" / "results" / "demo_size.json"


def build(folder: Path, dialogues: int) -> float:
    """The default config with only the demo's size and paths changed, extracted into `folder`."""
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    config["demo"]["dialogues"] = dialogues
    config["demo"]["out_dir"] = str((folder / "demo").resolve())  # = corpus.root, which run_extraction sets
    return run_extraction({"extract": config}, folder / "demo", folder, "feats.zarr")["wall_seconds"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dialogues", default="20,48")
    parser.add_argument("--seeds", default="0,1,2")
    args = parser.parse_args()
    sizes = [int(d) for d in args.dialogues.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    from cache_schema import open_cache
    from fuse.ablation import run_ablation

    results = {}
    with tempfile.TemporaryDirectory(prefix="emofuse-demo-size-") as tmp:
        for dialogues in sizes:
            folder = Path(tmp) / f"d{dialogues}"
            folder.mkdir()
            extraction_s = build(folder, dialogues)
            splits = open_cache(folder / "feats.zarr").column("split")
            started = time.perf_counter()
            report = run_ablation(folder / "feats.zarr", folder / "ablation", seeds=seeds, echo=lambda _: None)
            per_seed = {arm: [round(v, 4) for v in a["splits"]["test"]["weighted_f1"]] for arm, a in report.arms.items()}
            singles = [m for m in per_seed if m != "fused"]
            results[str(dialogues)] = {
                "utterances": {s: int((splits == s).sum()) for s in ("train", "dev", "test")},
                "extraction_seconds": extraction_s,
                "ablation_seconds": round(time.perf_counter() - started, 1),
                "test_weighted_f1_per_seed": per_seed,
                "test_weighted_f1_mean": {arm: round(float(np.mean(v)), 4) for arm, v in per_seed.items()},
                "fusion_beats_every_modality_in_the_mean": report.fusion_beats_every_modality,
                "seeds_where_fusion_beats_every_modality": [
                    seed for i, seed in enumerate(seeds) if all(per_seed["fused"][i] > per_seed[m][i] for m in singles)
                ],
            }
            print(dialogues, json.dumps(results[str(dialogues)]), flush=True)
    out = {
        "command": f"python bench/demo_size.py --dialogues {args.dialogues} --seeds {args.seeds}",
        "commit": commit_label(),
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "python": platform.python_version()},
        "protocol": "default demo config and fuse ablate defaults (cmaf, auto normalisation); weighted F1 on the demo's test split",
        "results": results,
    }
    RESULT.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {RESULT}")


if __name__ == "__main__":
    main()
