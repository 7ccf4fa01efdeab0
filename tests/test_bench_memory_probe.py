"""bench/memory_probe.py: its `infer_preallocated` variant, the candidate memory fix, predicts exactly what the library's infer does."""
from __future__ import annotations

import numpy as np
import pytest

from tests.bench_helpers import load_bench_script


@pytest.mark.parametrize("model_name", ["late", "cmaf"])  # cmaf returns gate weights too
def test_preallocated_infer_gives_the_library_predictions(tmp_path, monkeypatch, model_name):
    import torch

    import fuse.runs.inference as inference
    import fuse.training.recipe as recipe
    from cache_schema import open_cache
    from fuse.data import FeatureData
    from fuse.models import build_model
    from fuse.testing.synthetic_cache import make_synthetic_cache

    make_synthetic_cache(tmp_path / "c.zarr", n_dialogues=6, turns=7)  # some video missing: masks differ per row
    data = FeatureData.for_training(open_cache(tmp_path / "c.zarr"), {}, metadata=[], normalisation="global")
    torch.manual_seed(0)
    model = build_model(model_name, data.input_dims, data.n_classes, data.spec.task, None)
    rows = data.indices("dev")
    expected = inference.infer(model, data, rows, 4, "cpu")

    library_infer = inference.infer
    monkeypatch.setattr(inference, "infer", library_infer)  # restored after the test
    monkeypatch.setattr(recipe, "infer", recipe.infer)
    load_bench_script("memory_probe")._infer_preallocated()
    assert inference.infer is recipe.infer and inference.infer is not library_infer  # the variant is in place
    got = inference.infer(model, data, rows, 4, "cpu")

    np.testing.assert_array_equal(got.indices, expected.indices)
    np.testing.assert_array_equal(got.probabilities, expected.probabilities)
    if expected.gate_weights is None:
        assert got.gate_weights is None
    else:
        np.testing.assert_array_equal(got.gate_weights, expected.gate_weights)
    assert got.modality_names == expected.modality_names and got.loss == pytest.approx(expected.loss, rel=1e-12)
