"""Missing-modality robustness (fuse.robustness, `fuse evaluate --drop`, `fuse robustness`),
modality dropout in training (fuse.training.modality_dropout) and the epochs cap."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from fuse import options as O
from fuse.batch import future_key
from fuse.cli import main
from fuse.models import MODELS, build_model
from fuse.robustness import check_drop, kept_subsets, without_modalities
from fuse.testing.synthetic_cache import make_synthetic_cache
from fuse.training import TrainOptions, train
from fuse.training.inputs import build_training_data
from fuse.training.modality_dropout import ModalityDropout

MODALITIES = ("text", "audio", "video")


def _feature_data(root, model="cmaf", multi_label=False):
    """FeatureData with dialogue context (past and future turns) over a three-modality cache."""
    cache = make_synthetic_cache(root / "c.zarr", missing_every={"video.synthetic": 5}, multi_label=multi_label)
    options = O.resolve_options(TrainOptions(cache=str(cache), model=model, context_turns=3, out=str(root / "r")))
    return build_training_data(options)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return _feature_data(tmp_path_factory.mktemp("rob"))


@pytest.fixture(scope="module")
def multi_label_data(tmp_path_factory):
    return _feature_data(tmp_path_factory.mktemp("robm"), "carat", multi_label=True)


def _batch(data, rows):
    return data.batch_for_rows(np.asarray(rows), with_labels=True)


def test_a_dropped_modality_is_what_real_missing_data_gives(data):
    """Hiding audio for everyone equals the data layer's batch for a cache without audio."""
    rows = data.indices("train")[:6]
    dropped = without_modalities(_batch(data, rows), ["audio"])
    fs = data.feature_sets["audio"]
    saved = fs.present.copy()
    try:
        fs.present[:] = False  # the cache says: no utterance has audio
        missing = data.batch_for_rows(rows, with_labels=True)
    finally:
        fs.present[:] = saved
    for key in ("text", "audio", "video"):
        a, b = dropped.modalities[key], missing.modalities[key]
        assert torch.equal(a.mask, b.mask) and torch.equal(a.present, b.present)
        torch.testing.assert_close(a.values[a.mask], b.values[b.mask])
        assert (a.values[~a.mask] == 0).all()
    for key in ("audio", future_key("audio"), "text"):
        a, b = dropped.context[key], missing.context[key]
        assert torch.equal(a.mask, b.mask) and torch.equal(a.present, b.present)
        torch.testing.assert_close(a.values, b.values)
    assert not dropped.modalities["audio"].present.any() and not dropped.context["audio"].mask.any()


def test_drop_names_are_checked():
    assert check_drop(["video", "text"], MODALITIES) == ("text", "video")
    with pytest.raises(ValueError, match=r"'sound' is not a modality of this run \(it reads text, audio, video\)"):
        check_drop(["sound"], MODALITIES)
    with pytest.raises(ValueError, match="cannot drop every modality"):
        check_drop(["text", "audio", "video"], MODALITIES)
    assert kept_subsets(("text", "audio")) == [("text", "audio"), ("text",), ("audio",)]
    assert len(kept_subsets(MODALITIES)) == 7


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_model_ignores_a_dropped_modality(name, data, multi_label_data):
    """Through the mask: whatever the hidden modality held, the output is the same, and it is
    not the output of the full batch (the modality did matter)."""
    data = multi_label_data if name == "carat" else data
    torch.manual_seed(0)
    from test_models import TINY  # the tiny configs of the model tests

    model = build_model(name, data.input_dims, data.n_classes, data.spec.task, data.metadata.spec(), **TINY[name]).eval()
    batch = _batch(data, data.indices("train")[:6])
    kept = "audio" if name == "context" else "text"  # the context model reads text alone: drop that
    drop = [m for m in MODALITIES if m != kept]
    with torch.no_grad():
        full = model(batch).logits
        reference = model(without_modalities(batch, drop)).logits
        for m in drop:
            batch.modalities[m].values.add_(torch.randn_like(batch.modalities[m].values) * 10)
            batch.context[m].values.add_(5.0)
        noisy = model(without_modalities(batch, drop)).logits
    assert torch.isfinite(reference).all()
    torch.testing.assert_close(noisy, reference)
    assert not torch.allclose(full, reference)


# -------------------------------------------------------------------- modality dropout


def test_modality_dropout_is_deterministic_and_never_hides_everything(data):
    rows = data.indices("train")
    dropout = ModalityDropout(0.6, seed=3, n_rows=data.n, modalities=tuple(data.feature_sets))
    batch = _batch(data, rows)
    hide = dropout.hidden_rows(batch, epoch=0)
    present = torch.stack([batch.modalities[m].present for m in data.feature_sets], dim=1)
    assert not (hide & ~present).any(), "only modalities an utterance has are hidden"
    assert ((present & ~hide).sum(dim=1) >= 1).all(), "every utterance keeps a modality"
    assert 0.3 < hide[present].float().mean() < 0.6
    again = ModalityDropout(0.6, seed=3, n_rows=data.n, modalities=tuple(data.feature_sets))
    assert torch.equal(again.hidden_rows(batch, 0), hide)
    # an utterance's fate depends on (seed, epoch, row), not on the batch it is in
    part = _batch(data, rows[5:9])
    assert torch.equal(again.hidden_rows(part, 0), hide[5:9])
    assert not torch.equal(again.hidden_rows(batch, 1), hide)
    assert not torch.equal(ModalityDropout(0.6, 4, data.n, tuple(data.feature_sets)).hidden_rows(batch, 0), hide)
    out = dropout(batch, 0)
    for k, m in enumerate(data.feature_sets):
        assert torch.equal(out.modalities[m].present, present[:, k] & ~hide[:, k])
        assert not out.modalities[m].mask[hide[:, k]].any()
        assert not out.context[m].mask[hide[:, k], -1].any()  # the utterance's own turn
        assert torch.equal(out.context[m].mask[:, :-1], batch.context[m].mask[:, :-1])  # neighbours kept
    assert ModalityDropout(0.0, 3, data.n, tuple(data.feature_sets))(batch, 0) is batch


def test_modality_dropout_is_an_option():
    assert O.parse_options({}).modality_dropout == 0.0
    assert O.parse_options({"modality_dropout": "0.3"}).modality_dropout == 0.3
    with pytest.raises(O.OptionsError, match="modality_dropout"):
        O.parse_options({"modality_dropout": 1.5})


def test_epochs_default_is_a_generous_cap():
    options = O.resolve_options(O.parse_options({"model": "cmaf", "cache": "x.zarr"}))
    assert options.epochs == O.DEFAULT_MAX_EPOCHS >= 3 * MODELS["cmaf"][0].default_training.epochs
    assert O.resolve_options(O.parse_options({"model": "cmaf", "cache": "x.zarr", "epochs": 7})).epochs == 7


# -------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("robrun")
    cache = make_synthetic_cache(root / "c.zarr", shift=0.8)
    options = TrainOptions(
        cache=str(cache), out=str(root / "run"), model="late", epochs=2, patience=5, batch_size=8, lr=3e-3, progress=False, tensorboard=False
    )
    lines = []
    result = train(options, echo=lines.append)
    return result, root, lines


def cli(*args):
    return CliRunner().invoke(main, list(args))


def test_a_run_says_the_epochs_cap_stopped_it(run):
    result, _, lines = run
    assert result.metrics["stopped_by"] == "epochs_cap"
    assert result.metrics["stop_reason"] == "stopped by the epochs cap (2), not by early stopping (patience 5)"
    assert any(line.startswith("stopped by the epochs cap (2)") for line in lines)


def test_evaluate_drop_writes_its_own_file(run):
    result, root, _ = run
    folder = result.run_dir
    before = (folder / "metrics.json").read_text()
    out = cli("evaluate", "--run", str(folder), "--drop", "audio,video", "--device", "cpu")
    assert out.exit_code == 0, out.output
    assert "audio, video treated as missing" in out.output
    assert (folder / "metrics.json").read_text() == before
    written = json.loads((folder / "metrics_without-audio-video.json").read_text())
    assert written["dropped"] == ["audio", "video"]
    assert written["splits"]["test"]["modalities_kept"] == ["text"]
    full = json.loads(before)["splits"]["test"]["weighted_f1"]
    assert written["splits"]["test"]["weighted_f1"] != full
    for bad, message in (("sound", "'sound' is not a modality of this run"), ("text,audio,video", "cannot drop every modality")):
        out = cli("evaluate", "--run", str(folder), "--drop", bad, "--device", "cpu")
        assert out.exit_code == 2 and message in out.output and "Traceback" not in out.output
        assert len(out.output.strip().splitlines()) == 1


def test_robustness_table_for_every_subset(run):
    result, _, _ = run
    folder = result.run_dir
    out = cli("robustness", "--run", str(folder), "--device", "cpu")
    assert out.exit_code == 0, out.output
    table = json.loads((folder / "robustness_test.json").read_text())
    assert [tuple(e["kept"]) for e in table["subsets"]] == kept_subsets(MODALITIES)
    assert table["metrics"] == ["weighted_f1", "accuracy", "uar"]
    full = json.loads((folder / "metrics.json").read_text())["splits"]["test"]
    assert table["subsets"][0]["weighted_f1"] == pytest.approx(full["weighted_f1"])
    text_only = json.loads((folder / "metrics_without-audio-video.json").read_text()) if (folder / "metrics_without-audio-video.json").exists() else None
    if text_only is not None:
        row = next(e for e in table["subsets"] if e["kept"] == ["text"])
        assert row["weighted_f1"] == pytest.approx(text_only["splits"]["test"]["weighted_f1"])
    assert "| text + audio + video |" in (folder / "robustness_test.md").read_text()
    assert (folder / "robustness_test.png").read_bytes()[:4] == b"\x89PNG"
    assert "| audio |" in out.output


@pytest.mark.slow
def test_training_with_modality_dropout_is_deterministic_and_changes_training(tmp_path):
    cache = make_synthetic_cache(tmp_path / "c.zarr")
    base = dict(cache=str(cache), model="late", epochs=2, batch_size=8, lr=3e-3, progress=False, tensorboard=False)

    def run_with(p, name):
        return train(TrainOptions(**base, out=str(tmp_path / name), modality_dropout=p), echo=lambda *_: None)

    first, second, plain = run_with(0.5, "a"), run_with(0.5, "b"), run_with(0.0, "c")
    assert [r["train_loss"] for r in first.history] == [r["train_loss"] for r in second.history]
    assert [r["train_loss"] for r in first.history] != [r["train_loss"] for r in plain.history]
    assert first.metrics["splits"]["test"] == second.metrics["splits"]["test"]
