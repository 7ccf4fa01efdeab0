"""bench/gpu.py: the CUDA benchmark's every path runs as a CPU dry run (tiny models, fp32)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.bench_helpers import load_bench_script

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow  # ~15 s of CPU (demo clips, three tiny encoders, two training runs); minutes on a loaded machine
def test_dry_run_measures_every_encoder_and_model(tmp_path):
    out = tmp_path / "gpu-dry.json"
    assert load_bench_script("gpu").main(["--dry-run", "--out", str(out)]) == 0
    record = json.loads(out.read_text())
    assert record["dry_run"] is True and record["sizes"]["utterances"] >= 10
    for modality in ("text", "audio", "video"):
        run = record["extraction"][modality]["float32"]
        assert run["utterances"] == record["sizes"]["utterances"] and run["failed"] == 0, run
        assert 0 < run["forward_seconds"] <= run["wall_seconds"] and 0 < run["efficiency"] <= 1
        assert run["compute_dtype"] == "float32"
    for model in ("late", "cmaf"):
        assert record["training"][model]["train_utterances_per_second"] > 0
    assert not (REPO / "bench" / "results" / "gpu.json").exists() or "dry_run\": false" in (REPO / "bench" / "results" / "gpu.json").read_text()


def test_dry_run_never_writes_the_results_file_and_cpu_refuses_a_real_run(capsys):
    bench = load_bench_script("gpu")
    with pytest.raises(SystemExit):
        bench.main(["--dry-run"])
    assert "--dry-run writes only to a path given with --out" in capsys.readouterr().err
    import torch

    if not torch.cuda.is_available():
        with pytest.raises(SystemExit):
            bench.main([])
        assert "no CUDA device" in capsys.readouterr().err
