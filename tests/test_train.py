"""The training loop (fuse.train) and run folders (fuse.runs) on tiny synthetic caches."""
from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
import torch
import zarr

from fuse import metrics as M
from fuse import runs
from fuse.testing.synthetic_cache import make_synthetic_cache
from fuse.training import TrainingDiverged, TrainingError, TrainOptions, train, train_seeds

SMALL_CMAF = {"fusion_dim": 16, "num_heads": 2, "hidden_size": 16, "metadata_embedding_dim": 4, "metadata_numeric_dim": 4}


@pytest.fixture(scope="module")
def cache_path(tmp_path_factory):
    return make_synthetic_cache(tmp_path_factory.mktemp("train") / "c.zarr")


@pytest.fixture(scope="module")
def multi_cache_path(tmp_path_factory):
    return make_synthetic_cache(tmp_path_factory.mktemp("multi") / "m.zarr", multi_label=True, classes=("happy", "sad", "anger"))


def _options(cache_path, out, **kw):
    kw.setdefault("model", "late")
    kw.setdefault("epochs", 4)
    kw.setdefault("batch_size", 8)
    kw.setdefault("lr", 3e-3)
    kw.setdefault("progress", False)
    return TrainOptions(cache=str(cache_path), out=str(out), **kw)


def _quiet(*_):
    pass


def test_loss_falls_and_every_output_is_written(cache_path, tmp_path):
    result = train(_options(cache_path, tmp_path / "run", epochs=6), echo=_quiet)
    losses = [row["train_loss"] for row in result.history]
    assert losses[-1] < 0.8 * losses[0]
    run = tmp_path / "run"
    for name in ("config.yaml", "data.json", "last.pt", "best.pt", "log.csv", "metrics.json", "training_curves.png", "confusion_test.png"):
        assert (run / name).is_file(), name
    metrics = json.loads((run / "metrics.json").read_text())
    for split in ("dev", "test"):
        for name in M.SINGLE_LABEL_METRICS:
            assert 0.0 <= metrics["splits"][split][name] <= 1.0
        assert set(metrics["splits"][split]["per_class"]) == {"neutral", "joy", "anger"}
    assert metrics["splits"]["dev"]["weighted_f1"] > 0.6, "the class shift is learnable"
    rows = list(csv.DictReader(open(run / "log.csv")))
    assert [int(r["epoch"]) for r in rows] == list(range(1, 7))
    assert {"train_loss", "dev_loss", "dev_weighted_f1", "lr", "seconds", "skipped_steps"} <= set(rows[0])
    best = runs.load_checkpoint(run / "best.pt")
    assert best.epoch == best.best["epoch"] == metrics["best_epoch"]
    assert best.training is None, "best.pt holds the model, not the optimiser state"
    data = json.loads((run / "data.json").read_text())
    assert data["provenance"]["feature_sets"]["audio.synthetic"]["encoder_kind"] == "synthetic"


def test_multi_label_with_threshold_tuning(multi_cache_path, tmp_path):
    result = train(_options(multi_cache_path, tmp_path / "run", epochs=3, tune_threshold=True), echo=_quiet)
    metrics = result.metrics
    assert metrics["task"] == "multi_label" and metrics["metric"] == "micro_f1"
    for name in M.MULTI_LABEL_METRICS:
        assert name in metrics["splits"]["test"]
    assert metrics["threshold_tuned_on_dev"]["threshold"] == metrics["threshold"] in M.THRESHOLD_GRID
    assert runs.load_checkpoint(tmp_path / "run" / "best.pt").threshold == metrics["threshold"]


def test_resumed_run_ends_like_an_uninterrupted_one(cache_path, tmp_path):
    options = dict(model="cmaf", model_config=SMALL_CMAF, epochs=4, batch_size=12)
    straight = train(_options(cache_path, tmp_path / "straight", **options), echo=_quiet)

    def interrupt(epoch, row):
        if epoch == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(_options(cache_path, tmp_path / "resumed", **options), on_epoch_end=interrupt, echo=_quiet)
    assert not (tmp_path / "resumed" / "metrics.json").exists()
    resumed = train(TrainOptions(cache="", out=str(tmp_path / "resumed"), progress=False), resume=True, echo=_quiet)
    assert [r["train_loss"] for r in resumed.history] == [r["train_loss"] for r in straight.history]
    assert resumed.metrics["splits"] == straight.metrics["splits"]
    assert len(list(csv.DictReader(open(tmp_path / "resumed" / "log.csv")))) == 4
    # resuming a finished run does nothing
    again = train(TrainOptions(cache="", out=str(tmp_path / "resumed"), progress=False), resume=True, echo=_quiet)
    assert again.metrics == resumed.metrics


def test_plateau_schedule_reduces_on_a_stall_and_resumes_exactly(cache_path, tmp_path):
    # lr 0.3 on a tiny late model: dev stalls quickly, so the schedule halves within 6 epochs
    options = dict(model="late", epochs=6, batch_size=12, scheduler="plateau", lr=0.3, patience=6, warmup_ratio=0.0)
    echoed = []
    straight = train(_options(cache_path, tmp_path / "straight", **options), echo=echoed.append)
    lrs = [r["lr"] for r in straight.history]
    assert lrs[0] == pytest.approx(0.3)
    assert any(lr < 0.3 for lr in lrs), f"no reduction in {lrs}"
    assert all(b in (a, a / 2, a / 4) for a, b in zip(lrs, lrs[1:])), lrs
    assert any("learning rate reduced to" in line for line in echoed)

    def interrupt(epoch, row):
        if epoch == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(_options(cache_path, tmp_path / "resumed", **options), on_epoch_end=interrupt, echo=_quiet)
    resumed = train(TrainOptions(cache="", out=str(tmp_path / "resumed"), progress=False), resume=True, echo=_quiet)
    assert [r["lr"] for r in resumed.history] == lrs
    assert [r["train_loss"] for r in resumed.history] == [r["train_loss"] for r in straight.history]


def test_existing_run_is_not_overwritten(cache_path, tmp_path):
    train(_options(cache_path, tmp_path / "run", epochs=1), echo=_quiet)
    with pytest.raises(TrainingError, match="already holds a run"):
        train(_options(cache_path, tmp_path / "run", epochs=1), echo=_quiet)


def test_seeds_report_mean_and_std(cache_path, tmp_path):
    summary = train_seeds(_options(cache_path, tmp_path / "seeds", epochs=2), [1, 2], echo=_quiet)
    per_seed = [json.loads((tmp_path / "seeds" / f"seed-{s}" / "metrics.json").read_text()) for s in (1, 2)]
    values = [m["splits"]["test"]["weighted_f1"] for m in per_seed]
    stats = summary["splits"]["test"]["weighted_f1"]
    assert stats["values"] == values
    assert stats["mean"] == pytest.approx(np.mean(values))
    assert stats["std"] == pytest.approx(np.std(values, ddof=1))
    assert (tmp_path / "seeds" / "seeds.json").is_file()
    assert [m["seed"] for m in per_seed] == [1, 2]


def test_provenance_mismatch_is_refused(cache_path, tmp_path):
    train(_options(cache_path, tmp_path / "run", epochs=1), echo=_quiet)
    other = tmp_path / "other.zarr"
    shutil.copytree(cache_path, other)
    group = zarr.open_group(str(other / "features" / "audio.synthetic"), mode="a")
    group.attrs["weights_sha256"] = "0" * 64
    with pytest.raises(runs.ProvenanceMismatch, match=r"feature set 'audio.synthetic' differs .*weights_sha256: .* -> '0000"):
        runs.load_run(tmp_path / "run", other)
    loaded = runs.load_run(tmp_path / "run")  # its own cache is fine
    assert loaded.checkpoint.model["name"] == "late"


def test_a_poisoned_batch_is_skipped_and_never_reaches_the_optimiser(cache_path, tmp_path, monkeypatch):
    from fuse.data import FeatureData

    original = FeatureData._modality_input
    poisoned_row = 0

    def read(self, modality, utts, frames):
        out = original(self, modality, utts, frames)
        hit = np.nonzero(np.asarray(utts) == poisoned_row)[0]
        if modality == "audio" and len(hit) and out.present[hit[0]]:
            out.values[hit[0]] *= np.inf
        return out

    monkeypatch.setattr(FeatureData, "_modality_input", read)
    seen = []
    original_step = torch.optim.AdamW.step

    def step(self, *args, **kwargs):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    seen.append(bool(torch.isfinite(p.grad).all()))
        return original_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", step)
    result = train(_options(cache_path, tmp_path / "run", epochs=2), echo=_quiet)
    assert [row["skipped_steps"] for row in result.history] == [1, 1]
    assert result.metrics["skipped_steps"] == 2
    assert seen and all(seen), "no non-finite gradient reached AdamW"
    state = runs.load_checkpoint(tmp_path / "run" / "last.pt")
    assert all(torch.isfinite(v).all() for v in state.model["state"].values())


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_persistent_non_finite_loss_stops_with_a_reason(cache_path, tmp_path, monkeypatch):
    from fuse.data.normalisation import Normaliser

    fit = Normaliser.fit

    def poisoned_fit(*args, **kwargs):
        normaliser = fit(*args, **kwargs)
        normaliser.norms["text.synthetic"].std[:, 0] = 0.0  # an infinite feature scale
        return normaliser

    monkeypatch.setattr(Normaliser, "fit", poisoned_fit)
    with pytest.raises(TrainingDiverged, match="loss was NaN/inf for 5 steps in a row"):
        train(_options(cache_path, tmp_path / "run", epochs=2), echo=_quiet)


def test_context_model_gets_dialogue_context(cache_path, tmp_path):
    result = train(_options(cache_path, tmp_path / "run", model="context", epochs=2, model_config={"context_hidden_size": 8, "hidden_size": 8}), echo=_quiet)
    data = json.loads((tmp_path / "run" / "data.json").read_text())
    assert data["spec"]["context_turns"] == 10
    assert data["spec"]["feature_sets"] == {"text": "text.synthetic"}
    assert "test" in result.metrics["splits"]


def test_carat_on_single_label_cache_is_refused(cache_path, tmp_path):
    with pytest.raises(TrainingError, match="single_label cache .* handles only multi_label"):
        train(_options(cache_path, tmp_path / "run", model="carat"), echo=_quiet)


def test_speaker_normalisation_run_saves_training_statistics_only(tmp_path):
    path = make_synthetic_cache(tmp_path / "c.zarr", test_speaker="Gunther")
    train(_options(path, tmp_path / "run", epochs=1, normalisation="speaker"), echo=_quiet)
    saved = runs.load_checkpoint(tmp_path / "run" / "best.pt").normaliser
    groups = saved["feature_sets"]["audio.synthetic"]["groups"]
    assert saved["mode"] == "speaker" and "Ross" in groups and "Gunther" not in groups
    loaded = runs.load_run(tmp_path / "run")  # Gunther's statistics are fit again, on this cache
    assert "Gunther" in loaded.data.normaliser.norms["audio.synthetic"].groups


def test_balanced_class_weights_weight_the_loss_by_inverse_training_frequency(tmp_path):
    from fuse.data import FeatureData
    from fuse.losses import focal_loss
    from fuse.options import OptionsError, parse_options
    from cache_schema import open_cache

    # Random labels over 4 classes: the training counts differ (checked below), so do the weights.
    path = make_synthetic_cache(tmp_path / "c.zarr", classes=("neutral", "joy", "anger", "neutral2"))
    labels = np.asarray(open_cache(path).column("label")).copy()
    data = FeatureData.for_training(open_cache(path), {}, normalisation="none")
    train_labels = labels[data.indices("train")]
    counts = np.bincount(train_labels, minlength=4)
    expected = len(train_labels) / (4 * counts)
    result = train(_options(path, tmp_path / "run", epochs=1, class_weights="balanced", model_config={"loss": "cross_entropy"}), echo=_quiet)
    record = runs.load_checkpoint(result.run_dir / "best.pt").model["config"]
    np.testing.assert_allclose(record["class_weights"], expected, rtol=1e-6)
    assert not np.allclose(expected, 1.0), "the fixture must be imbalanced for this test to mean anything"
    assert parse_options({"model": "late"}).class_weights == "none"  # off unless asked for
    # The weights enter the loss as defined: the model's loss equals weighted cross-entropy.
    model = runs.load_run(result.run_dir).model
    logits = torch.randn(5, 4)
    target = torch.tensor([0, 1, 2, 3, 0])
    batch = type("B", (), {"label": target, "labels_multi": None})()
    got = model.classification_loss(logits, batch)
    want = torch.nn.functional.cross_entropy(logits, target, weight=torch.tensor(expected, dtype=torch.float32))
    assert got.item() == pytest.approx(want.item(), rel=1e-5)
    assert got.item() != pytest.approx(torch.nn.functional.cross_entropy(logits, target).item(), rel=1e-3)
    with pytest.raises(OptionsError, match="drop model_config.class_weights"):
        parse_options({"model": "late", "class_weights": "balanced", "model_config": {"class_weights": [1.0, 2.0, 1.0, 1.0]}})
    with pytest.raises(OptionsError, match="model 'carat' has no class weights"):
        parse_options({"model": "carat", "class_weights": "balanced"})
    with pytest.raises(OptionsError, match="class_weights"):
        parse_options({"model": "late", "class_weights": "inverse"})


def test_l2_penalty_enters_the_loss_on_weights_only_and_shrinks_them(cache_path, tmp_path):
    from fuse.training.recipe import TrainingRecipe

    linear = {"hidden_size": 0, "dropout": 0.0, "loss": "cross_entropy"}
    plain = train(_options(cache_path, tmp_path / "plain", epochs=4, lr=0.05, model_config=linear), echo=_quiet)
    penalised = train(_options(cache_path, tmp_path / "l2", epochs=4, lr=0.05, model_config=linear, l2=1.0), echo=_quiet)
    assert "train_l2" not in plain.history[0] and penalised.history[0]["train_l2"] > 0

    def weight_norm(run_dir):
        state = runs.load_checkpoint(run_dir / "last.pt").model["state"]
        return sum(float(v.float().square().sum()) for k, v in state.items() if k.endswith("weight"))

    assert weight_norm(penalised.run_dir) < 0.5 * weight_norm(plain.run_dir)
    # What is penalised: the weight-decayed parameters, so no bias when biases are excluded from decay.
    recipe = TrainingRecipe(echo=_quiet)
    recipe.setup(_options(cache_path, tmp_path / "setup", epochs=1, model_config=linear, l2=1.0, exclude_norm_and_bias=True))
    names = {id(p): n for n, p in recipe.model.named_parameters()}
    chosen = {names[id(p)] for p in recipe.l2_parameters}
    assert chosen and all(n.endswith("weight") for n in chosen)
    recipe.cleanup()


def test_select_epoch_last_keeps_the_final_epoch_and_turns_early_stopping_off(cache_path, tmp_path):
    result = train(_options(cache_path, tmp_path / "run", epochs=5, patience=1, lr=0.3, select_epoch="last"), echo=_quiet)
    assert len(result.history) == 5, "patience 1 must not stop a select_epoch last run"
    assert result.metrics["kept_epoch"] == 5 and result.metrics["select_epoch"] == "last"
    best, last = runs.load_checkpoint(result.run_dir / "best.pt"), runs.load_checkpoint(result.run_dir / "last.pt")
    assert best.epoch == 5
    for key, value in last.model["state"].items():
        assert torch.equal(value, best.model["state"][key]), key


def test_fit_on_train_and_dev_refits_on_both_and_says_dev_is_in_sample(cache_path, tmp_path):
    from fuse.options import OptionsError, parse_options
    from fuse.training.recipe import TrainingRecipe

    with pytest.raises(OptionsError, match="set select_epoch last"):
        parse_options({"model": "late", "fit_on": "train+dev"})
    recipes = {}
    for fit_on in ("train", "train+dev"):
        recipe = TrainingRecipe(echo=_quiet)
        recipe.setup(_options(cache_path, tmp_path / fit_on.replace("+", "-"), epochs=2, select_epoch="last", fit_on=fit_on))
        recipes[fit_on] = recipe
    train_rows, dev_rows = recipes["train"].rows["train"], recipes["train"].rows["dev"]
    assert np.array_equal(recipes["train"].rows["fit"], train_rows)
    assert np.array_equal(recipes["train+dev"].rows["fit"], np.sort(np.concatenate([train_rows, dev_rows])))
    assert recipes["train+dev"].steps_per_epoch[0] > recipes["train"].steps_per_epoch[0]
    result = recipes["train+dev"].train()
    assert result.metrics["dev_in_sample"] is True and result.metrics["fit_on"] == "train+dev"
    for recipe in recipes.values():
        recipe.cleanup()
