"""Check that the models' outputs are bit-identical to a reference commit with issue 16's features off.

    python bench/outputs_unchanged.py [REFERENCE_COMMIT]   (default dc4cd69, before issue 16)

Builds every model with the tiny configs of tests/test_models.py (same seed), runs one fixed
batch in train and eval mode, at the reference commit (exported with `git archive` to a temp
dir) and at the working tree, and prints whether logits and loss are identical (torch.equal).
Features off: carat with aligned_modalities (audio, video) and, in the working tree,
ctc_weight 0 (the tiny config fixes ctc_compression_ratio 0.5, the old fixed-ratio rule);
every other model at its defaults (video_encoder_blocks 0, metadata_in_attention False,
output_attentions True).
"""
from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

SNIPPET = r'''
import sys, torch
sys.path.insert(0, "tests")
from test_models import build, make_batch, TINY
import dataclasses
from fuse.models import MODELS
torch.set_num_threads(1)
extra = {"carat": dict(aligned_modalities=("audio", "video"))}
if "ctc_weight" in {f.name for f in dataclasses.fields(MODELS["carat"][0])}:
    extra["carat"]["ctc_weight"] = 0.0
out = {}
for name in TINY:
    model = build(name, **extra.get(name, {}))
    for mode in ("train", "eval"):
        getattr(model, mode)()
        torch.manual_seed(1)
        o = model(make_batch(seed=3))
        out[f"{name}/{mode}"] = (o.logits.detach(), o.loss.detach())
torch.save(out, sys.argv[1])
'''


def run(tree: Path, out: Path) -> None:
    subprocess.run([sys.executable, "-c", SNIPPET, str(out)], cwd=tree, check=True, env={"PYTHONPATH": str(tree), "PATH": ""})


def main() -> int:
    import torch

    reference = sys.argv[1] if len(sys.argv) > 1 else "dc4cd69"
    root = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory() as tmp:
        old_tree = Path(tmp) / "ref"
        old_tree.mkdir()
        archive = subprocess.run(["git", "archive", reference], cwd=root, check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(old_tree)], input=archive, check=True)
        run(old_tree, Path(tmp) / "old.pt")
        run(root, Path(tmp) / "new.pt")
        old, new = torch.load(Path(tmp) / "old.pt"), torch.load(Path(tmp) / "new.pt")
    identical = True
    for key in old:
        same = torch.equal(old[key][0], new[key][0]) and torch.equal(old[key][1], new[key][1])
        identical &= same
        print(f"{key:16s} {'identical' if same else 'DIFFERENT'}")
    print(f"reference {reference}: {'all identical' if identical else 'differences found'}")
    return 0 if identical else 1


if __name__ == "__main__":
    raise SystemExit(main())
