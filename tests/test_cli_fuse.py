"""`fuse train / evaluate / predict / explain` through click's CliRunner."""
from __future__ import annotations

import csv
import json
import os

import pytest
import yaml
from click.testing import CliRunner

from fuse.cli import main
from fuse.testing.synthetic_cache import make_synthetic_cache

SMALL_CMAF = ["--set", "fusion_dim=16", "--set", "num_heads=2", "--set", "hidden_size=16"]


@pytest.fixture(scope="module")
def cache_path(tmp_path_factory):
    return str(make_synthetic_cache(tmp_path_factory.mktemp("cli") / "c.zarr"))


@pytest.fixture(scope="module")
def cmaf_training(cache_path, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("runs") / "cmaf")
    result = CliRunner().invoke(
        main,
        ["train", "--cache", cache_path, "--model", "cmaf", "--out", out, "--epochs", "2", "--batch-size", "8", "--lr", "3e-3", "--no-progress", *SMALL_CMAF],
    )
    assert result.exit_code == 0, result.output
    return out, result.output


@pytest.fixture(scope="module")
def cmaf_run(cmaf_training):
    return cmaf_training[0]


def _run(*args):
    return CliRunner().invoke(main, list(args))


def test_train_prints_metrics_and_writes_the_run(cmaf_run):
    metrics = json.loads(open(f"{cmaf_run}/metrics.json").read())
    assert set(metrics["splits"]) == {"dev", "test"}
    config = yaml.safe_load(open(f"{cmaf_run}/config.yaml"))
    assert config["model_config"] == {"fusion_dim": 16, "num_heads": 2, "hidden_size": 16}
    assert config["weight_decay"] == pytest.approx(3.75e-4), "unset options come from the model's defaults"
    assert os.path.isfile(f"{cmaf_run}/modality_weights_test.png")


def test_train_prints_where_the_metrics_and_every_plot_are(cmaf_training):
    out, printed = cmaf_training
    listed = [line.strip() for line in printed.split("plots:", 1)[1].splitlines() if line.strip()]
    names = {os.path.basename(p) for p in listed}
    assert {"confusion_test.png", "modality_weights_test.png", "training_curves.png"} <= names
    attention = [n for n in names if n.startswith("attention_")]
    assert len(attention) == 1 and attention[0].endswith("_text_to_audio.png"), names
    assert all(os.path.isfile(p) and os.path.dirname(p) == out for p in listed)
    assert f"metrics: {out}/metrics.json" in printed


def test_late_fusion_run_draws_no_attention_map(cache_path, tmp_path):
    out = str(tmp_path / "late")
    result = _run("train", "--cache", cache_path, "--model", "late", "--out", out, "--epochs", "1", "--no-progress")
    assert result.exit_code == 0, result.output
    assert "confusion_test.png" in result.output and "attention_" not in result.output


def test_ablate_trains_fused_and_each_modality_with_the_same_seeds(cache_path, tmp_path):
    out = tmp_path / "ablation"
    args = ["ablate", "--cache", cache_path, "--model", "late", "--seeds", "0,1", "--epochs", "2", "--out", str(out)]
    result = _run(*args)
    assert result.exit_code == 0, result.output
    report = json.loads((out / "ablation.json").read_text())
    assert list(report["arms"]) == ["fused", "text", "audio", "video"]
    assert report["comparison_split"] == "test" and report["metric"] == "weighted_f1"
    for arm, record in report["arms"].items():
        assert len(record["runs"]) == 2 and len(record["splits"]["test"]["weighted_f1"]) == 2
        for run in record["runs"]:
            config = yaml.safe_load((out / run / "config.yaml").read_text())
            chosen = {m for m in ("text", "audio", "video") if config[m] != "none"}
            assert chosen == ({"text", "audio", "video"} if arm == "fused" else {arm})
    best_single = max(sum(report["arms"][m]["splits"]["test"]["weighted_f1"]) / 2 for m in ("text", "audio", "video"))
    fused = sum(report["arms"]["fused"]["splits"]["test"]["weighted_f1"]) / 2
    assert report["fusion_margin"] == pytest.approx(fused - best_single)
    assert "fused (" in result.output and "video only" in result.output
    again = _run(*args)  # every run finished: nothing is retrained, same report
    assert again.exit_code == 0 and json.loads((out / "ablation.json").read_text()) == report
    speaker = _run(*args[:-1], str(tmp_path / "speaker"), "--normalisation", "speaker")
    assert speaker.exit_code == 0, speaker.output
    run = json.loads((tmp_path / "speaker" / "ablation.json").read_text())["arms"]["fused"]["runs"][0]
    assert json.loads((tmp_path / "speaker" / run / "data.json").read_text())["spec"]["normalisation"] == "speaker"
    one = _run("ablate", "--cache", cache_path, "--text", "none", "--audio", "none", "--out", str(tmp_path / "x"))
    assert one.exit_code == 2 and "at least two modalities" in one.output


def test_evaluate_updates_metrics_json(cmaf_run):
    result = _run("evaluate", "--run", cmaf_run, "--split", "valid", "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert "weighted_f1" in result.output and "split dev" in result.output
    assert "dev" in json.loads(open(f"{cmaf_run}/metrics.json").read())["splits"]


def test_predict_writes_one_row_per_utterance(cmaf_run, tmp_path):
    out = tmp_path / "preds.csv"
    result = _run("predict", "--run", cmaf_run, "--out", str(out), "--device", "cpu")
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(open(out)))
    assert len(rows) == 72
    assert list(rows[0]) == ["id", "split", "prob_neutral", "prob_joy", "prob_anger", "predicted", "true", "weight_text", "weight_audio", "weight_video"]
    for row in rows:
        probs = [float(row[f"prob_{c}"]) for c in ("neutral", "joy", "anger")]
        assert sum(probs) == pytest.approx(1, abs=1e-4)
        assert row["predicted"] == ("neutral", "joy", "anger")[probs.index(max(probs))]
        assert sum(float(row[f"weight_{m}"]) for m in ("text", "audio", "video")) == pytest.approx(1, abs=1e-4)
    test_only = _run("predict", "--run", cmaf_run, "--out", str(out), "--split", "test")
    assert test_only.exit_code == 0 and len(list(csv.DictReader(open(out)))) == 12


def test_explain_plots_an_attention_map(cmaf_run, tmp_path):
    out = tmp_path / "att.png"
    result = _run("explain", "--run", cmaf_run, "--utterance", "dia0_utt1", "--out", str(out))
    assert result.exit_code == 0, result.output
    assert out.stat().st_size > 1000 and "text_to_audio" in result.output
    bad = _run("explain", "--run", cmaf_run, "--utterance", "nope")
    assert bad.exit_code == 2 and "no utterance with id 'nope'" in bad.output
    wrong = _run("explain", "--run", cmaf_run, "--utterance", "dia0_utt1", "--attention", "video_to_nothing")
    assert wrong.exit_code == 2 and "this model has audio_to_text" in wrong.output


def test_unknown_feature_set_names_the_available_ones(cache_path, tmp_path):
    result = _run("train", "--cache", cache_path, "--text", "text.bert", "--out", str(tmp_path / "r"))
    assert result.exit_code == 2
    assert "no feature set 'text.bert'" in result.output and "text: text.synthetic" in result.output


def test_path_that_is_not_a_cache_is_one_line(tmp_path):
    result = _run("train", "--cache", str(tmp_path), "--out", str(tmp_path / "r"))
    assert result.exit_code == 2
    assert result.output.strip().count("\n") == 0 and "not an emofuse cache" in result.output
    for command in (["evaluate", "--run", str(tmp_path)], ["predict", "--run", str(tmp_path), "--out", str(tmp_path / "p.csv")]):
        result = _run(*command)
        assert result.exit_code == 2 and "not a run folder" in result.output


def test_carat_on_single_label_cache_is_a_clear_message(cache_path, tmp_path):
    result = _run("train", "--cache", cache_path, "--model", "carat", "--out", str(tmp_path / "r"))
    assert result.exit_code == 2
    assert "single_label cache" in result.output and "handles only multi_label" in result.output


def test_bad_arguments(cache_path, tmp_path):
    assert "--cache is required" in _run("train").output
    result = _run("train", "--cache", cache_path, "--model", "nope", "--out", str(tmp_path / "r"))
    assert result.exit_code == 2 and "unknown model 'nope'" in result.output
    result = _run("train", "--cache", cache_path, "--model", "late", "--set", "bogus=1", "--out", str(tmp_path / "r"), "--epochs", "1")
    assert result.exit_code == 2 and "model_config key 'bogus' is not a setting of model 'late'" in result.output
    result = _run("train", "--cache", cache_path, "--metric", "micro_f1", "--model", "late", "--out", str(tmp_path / "r2"))
    assert result.exit_code == 2 and "not a single_label metric" in result.output
    result = _run("train", "--resume", "--out", str(tmp_path / "r3"), "--lr", "0.1")
    assert result.exit_code == 2 and "do not pass --lr" in result.output


def test_config_file_with_flag_override_and_seeds(cache_path, tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"cache": cache_path, "model": "late", "epochs": 3, "batch_size": 16, "lr": 0.003, "seeds": [1, 2], "progress": False}))
    result = _run("train", "--config", str(config), "--epochs", "1", "--out", str(tmp_path / "r"))
    assert result.exit_code == 0, result.output
    saved = yaml.safe_load(open(tmp_path / "r" / "seed-2" / "config.yaml"))
    assert saved["epochs"] == 1 and saved["batch_size"] == 16 and saved["seed"] == 2
    assert "mean ± std" in result.output
    assert json.loads(open(tmp_path / "r" / "seeds.json").read())["seeds"] == [1, 2]


def test_resume_through_the_cli_after_finishing(cmaf_run):
    result = _run("train", "--resume", "--out", cmaf_run)
    assert result.exit_code == 0 and "already finished" in result.output


def test_training_twice_without_out_takes_the_next_run_folder(cache_path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = ["train", "--cache", cache_path, "--model", "late", "--epochs", "1", "--no-progress"]
    first, second = _run(*args), _run(*args)
    assert first.exit_code == 0 and second.exit_code == 0, second.output
    assert "metrics: runs/late/metrics.json" in first.output
    assert "metrics: runs/late-2/metrics.json" in second.output
    assert (tmp_path / "runs/late/metrics.json").is_file() and (tmp_path / "runs/late-2/metrics.json").is_file()
    resumed = _run("train", "--resume", "--no-progress")  # no --out: the latest run of the default model
    assert resumed.exit_code == 2 and "runs/cmaf" in resumed.output
    resumed = _run("train", "--resume", "--model", "late", "--no-progress")
    assert resumed.exit_code == 0 and "runs/late-2: already finished" in resumed.output
    taken = _run(*args, "--out", "runs/late")  # an explicit folder is never reused
    assert taken.exit_code == 2 and "already holds a run" in taken.output
