"""Issue 16, seed fidelity: optimiser and schedules (fuse.training.optim), CARAT's CTC alignment training and
seed 3.3.2 target lengths, the memory-efficient attention path, seed 1's video encoder, metadata in
the cross-modal attention, training defaults and the seed presets (config/train/)."""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from fuse.models import MODELS, build_model
from fuse.models.carat import AdaptiveCTCAlignment, CARATConfig
from fuse.models.cma import CrossModalAttention
from fuse.models.video_encoder import TemporalVideoEncoder, VideoEncoderConfig
from fuse.training.optim import bert_adam_factor, build_optimizer, build_scheduler, end_epoch, norm_and_bias_names, parameter_groups
from test_models import DIMS, N_CLASSES, TINY, build, make_batch, pad_batch

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def single_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


# --------------------------------------------------------------------------------------------
# fuse.training.optim
# --------------------------------------------------------------------------------------------


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoders = nn.ModuleDict({"text": nn.Linear(3, 4)})
        self.norm = nn.LayerNorm(4)
        self.head = nn.Linear(4, 2, bias=False)
        self.frozen = nn.Linear(2, 2)
        self.frozen.requires_grad_(False)


def lrs_over(scheduler, optimizer, steps: int) -> list[float]:
    lrs = []
    for _ in range(steps):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


def test_bert_adam_schedule_follows_seed_2_formula():
    model = Tiny()
    optimizer = build_optimizer(model, lr=3e-5, weight_decay=0.01)
    total, ratio = 50, 0.2
    lrs = lrs_over(build_scheduler(optimizer, "bert_adam", ratio, total), optimizer, total)
    warmup = 10
    expected = [0.0] + [3e-5 * min(s / warmup, math.sqrt(warmup / s)) for s in range(1, total)]
    assert lrs == pytest.approx(expected, rel=1e-12, abs=1e-18)
    assert max(lrs) == pytest.approx(3e-5) and lrs.index(max(lrs)) == warmup
    # After the peak: inverse square root, not linear decay (half the peak at 4x the warmup).
    assert lrs[40] == pytest.approx(3e-5 / 2)
    assert bert_adam_factor(0, 10) == 0.0 and bert_adam_factor(10, 10) == 1.0


def test_linear_schedule_is_transformers_warmup_then_linear_decay():
    model = Tiny()
    optimizer = build_optimizer(model, lr=1e-3, weight_decay=0.0)
    total = 20
    lrs = lrs_over(build_scheduler(optimizer, "linear", 0.25, total), optimizer, total)
    warmup = 5
    expected = [1e-3 * (s / warmup if s < warmup else (total - s) / (total - warmup)) for s in range(total)]
    assert lrs == pytest.approx(expected, rel=1e-12, abs=1e-18)


def test_plateau_schedule_warms_up_within_one_epoch_and_halves_after_a_stall():
    model = Tiny()
    optimizer = build_optimizer(model, lr=1e-3, weight_decay=0.0, coef_lr=0.1, coef_lr_group=("encoders.",))
    # 100 optimiser steps in the cap, 10 per epoch: warmup is 0.5 of one epoch, not of the cap
    scheduler = build_scheduler(optimizer, "plateau", 0.5, 100, steps_per_epoch=10, patience=2)
    lrs = lrs_over(scheduler, optimizer, 10)
    assert lrs == pytest.approx([1e-3 * min(1.0, s / 5) for s in range(10)], rel=1e-12, abs=1e-18)
    assert [end_epoch(scheduler, improved) for improved in (True, False)] == [False, False]
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-3), "one stalled epoch is below the patience"
    assert end_epoch(scheduler, False) is True
    lrs = sorted(g["lr"] for g in optimizer.param_groups)
    assert lrs == pytest.approx([5e-5, 5e-4]), "halved at once, and every group keeps its coef_lr ratio"
    assert lrs_over(scheduler, optimizer, 3) == pytest.approx([5e-4] * 3), "the reduction holds for the following steps"
    # the counter restarts after a reduction and on a gain
    assert [end_epoch(scheduler, x) for x in (False, True, False)] == [False, False, False]
    # LambdaLR's state_dict keeps the factor: a fresh scheduler loaded from it continues alike
    fresh_optimizer = build_optimizer(Tiny(), lr=1e-3, weight_decay=0.0, coef_lr=0.1, coef_lr_group=("encoders.",))
    fresh = build_scheduler(fresh_optimizer, "plateau", 0.5, 100, steps_per_epoch=10, patience=2)
    fresh.load_state_dict(scheduler.state_dict())
    assert end_epoch(fresh, False) is True and end_epoch(scheduler, False) is True
    fresh.step(), scheduler.step()
    assert fresh.get_last_lr() == pytest.approx(scheduler.get_last_lr())
    assert sorted(fresh.get_last_lr()) == pytest.approx([2.5e-5, 2.5e-4])


def test_other_schedules_ignore_end_epoch():
    optimizer = build_optimizer(Tiny(), lr=1e-3, weight_decay=0.0)
    scheduler = build_scheduler(optimizer, "constant", 0.0, 10)
    assert not any(end_epoch(scheduler, False) for _ in range(5))
    assert optimizer.param_groups[0]["lr"] == 1e-3


def test_scheduler_rejects_unknown_kind():
    optimizer = build_optimizer(Tiny(), lr=1e-3, weight_decay=0.0)
    with pytest.raises(ValueError, match="unknown scheduler"):
        build_scheduler(optimizer, "cosine", 0.1, 10)


def test_default_optimizer_is_one_adamw_group_over_trainable_parameters():
    model = Tiny()
    optimizer = build_optimizer(model, lr=1e-3, weight_decay=0.1, betas=(0.8, 0.9), eps=1e-6)
    assert isinstance(optimizer, torch.optim.AdamW) and len(optimizer.param_groups) == 1
    group = optimizer.param_groups[0]
    assert (group["lr"], group["weight_decay"], group["betas"], group["eps"]) == (1e-3, 0.1, (0.8, 0.9), 1e-6)
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert {id(p) for p in group["params"]} == trainable


def test_norm_and_bias_are_excluded_from_weight_decay_when_asked():
    model = Tiny()
    assert norm_and_bias_names(model) == {"encoders.text.bias", "norm.weight", "norm.bias", "frozen.bias"}
    groups = {g["name"]: g for g in parameter_groups(model, 1e-3, 0.01, exclude_norm_and_bias=True)}
    by_id = {id(p): n for n, p in model.named_parameters()}
    assert {by_id[id(p)] for p in groups["no_decay"]["params"]} == {"encoders.text.bias", "norm.weight", "norm.bias"}
    assert {by_id[id(p)] for p in groups["decay"]["params"]} == {"encoders.text.weight", "head.weight"}
    assert groups["no_decay"]["weight_decay"] == 0.0 and groups["decay"]["weight_decay"] == 0.01


def test_coef_lr_scales_the_named_group_and_survives_the_schedule():
    model = Tiny()
    optimizer = build_optimizer(
        model, lr=1e-3, weight_decay=0.01, exclude_norm_and_bias=True, coef_lr=0.1, coef_lr_group=("encoders.",)
    )
    groups = {g["name"]: g for g in optimizer.param_groups}
    assert set(groups) == {"decay", "no_decay", "coef_decay", "coef_no_decay"}
    assert groups["coef_decay"]["lr"] == pytest.approx(1e-4) and groups["decay"]["lr"] == 1e-3
    assert groups["coef_no_decay"]["weight_decay"] == 0.0
    scheduler = build_scheduler(optimizer, "bert_adam", 0.5, 4)
    for _ in range(2):
        optimizer.step()
        scheduler.step()
    assert groups["coef_decay"]["lr"] == pytest.approx(0.1 * groups["decay"]["lr"])
    with pytest.raises(ValueError, match="matches no trainable parameter"):
        build_optimizer(model, lr=1e-3, weight_decay=0.0, coef_lr=0.1, coef_lr_group=("encoder.",))


def test_carat_defaults_build_the_seed_2_optimiser():
    defaults = MODELS["carat"][0].default_training
    assert (defaults.scheduler, defaults.exclude_norm_and_bias, defaults.coef_lr) == ("bert_adam", True, 0.1)
    assert defaults.adam_eps == 1e-6 and defaults.adam_betas == (0.9, 0.999)
    model = build("carat")
    optimizer = build_optimizer(
        model,
        defaults.lr,
        defaults.weight_decay,
        defaults.adam_betas,
        defaults.adam_eps,
        exclude_norm_and_bias=defaults.exclude_norm_and_bias,
        coef_lr=defaults.coef_lr,
        coef_lr_group=defaults.coef_lr_group,
    )
    names = {id(p): n for n, p in model.named_parameters()}
    for group in optimizer.param_groups:
        for parameter in group["params"]:
            assert names[id(parameter)].startswith("encoders.") == group["name"].startswith("coef_")
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(list(model.parameters()))


def test_training_defaults_carry_max_len_and_loader_settings():
    carat = MODELS["carat"][0].default_training
    assert carat.max_len == {"text": None, "audio": None, "video": None}  # keep every frame
    seed1 = MODELS["cmaf"][0].default_training
    assert seed1.max_len == {} and seed1.scheduler == "linear"  # data-layer defaults; Table 3
    assert (seed1.drop_last, seed1.num_workers, seed1.pin_memory) == (True, 2, True)
    assert not hasattr(seed1, "optimizer")  # the dead field is gone: the optimiser is always AdamW


# --------------------------------------------------------------------------------------------
# CARAT: CTC alignment and seed 3.3.2 target lengths
# --------------------------------------------------------------------------------------------


def test_seed_target_length_rule_uses_the_position_limits():
    config = CARATConfig()
    assert config.compression_ratio("text") == pytest.approx(400 / 600)
    assert config.compression_ratio("audio") == pytest.approx(400 / 1200)
    model = build_model("carat", {"text": 300, "audio": 74, "video": 35}, 6, "multi_label")
    assert set(model.aligners) == {"text", "audio", "video"}
    audio, text = model.aligners["audio"], model.aligners["text"]
    # 10,891 COVAREP frames are pooled to 1,090 (<= 1,199) before the aligner: 1090/3 -> 363.
    assert audio.target_lengths(torch.tensor([1090, 1199, 400, 30])).tolist() == [363, 400, 133, 16]
    assert text.target_lengths(torch.tensor([374, 16, 10, 0])).tolist() == [249, 16, 16, 0]
    fixed = build_model("carat", {"text": 300, "audio": 74}, 6, "multi_label", ctc_compression_ratio=0.25)
    assert fixed.aligners["audio"].target_lengths(torch.tensor([1000])).tolist() == [250]


def test_ctc_loss_decreases_on_a_toy_alignment_problem():
    """Frames come in L blocks of identical random vectors; CTC against 1..L teaches the LSTM
    to assign block k to position k (monotone alignment)."""
    torch.manual_seed(0)
    blocks, per_block, dim = 4, 3, 6
    aligner = AdaptiveCTCAlignment(dim, max_target_length=blocks, compression_ratio=1 / per_block, min_target_length=1, num_layers=1)
    prototypes = torch.randn(blocks, dim)
    values = prototypes.repeat_interleave(per_block, dim=0).expand(8, -1, -1) + 0.1 * torch.randn(8, blocks * per_block, dim)
    mask = torch.ones(8, blocks * per_block, dtype=torch.bool)
    optimiser = torch.optim.Adam(aligner.parameters(), lr=0.05)
    losses = []
    for _ in range(80):
        *_, loss = aligner(values, mask, with_ctc_loss=True)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    # The published predictor's logits are LSTM outputs in (-1, 1), so the loss has a floor well
    # above 0; halving it is learning (an untrained aligner stays at its initial ~2.7).
    assert losses[-1] < 0.5 * losses[0], losses[::10]
    # The learned alignment is monotone: position k draws most of its mass from block k.
    with torch.no_grad():
        _, _, probs, _ = aligner(values, mask, with_ctc_loss=True)
    block_mass = probs[0].view(blocks, blocks, per_block).sum(-1)  # (position, block)
    assert block_mass.argmax(dim=1).tolist() == list(range(blocks))


def test_ctc_gradients_reach_the_alignment_modules():
    model = build("carat")
    model.train()
    output = model(make_batch())
    assert {"ctc_text", "ctc_audio", "ctc_video"} <= set(output.loss_parts)
    assert all(torch.isfinite(output.loss_parts[f"ctc_{m}"]) and output.loss_parts[f"ctc_{m}"] > 0 for m in DIMS)
    # The CTC term alone sends gradient into each aligner's LSTM.
    losses: dict[str, torch.Tensor] = {}
    model.encode_modality("audio", make_batch().modalities["audio"], losses)
    losses["audio"].backward()
    grads = [p.grad for p in model.aligners["audio"].parameters()]
    assert all(g is not None and g.abs().sum() > 0 for g in grads)
    assert all(p.grad is None for p in model.aligners["text"].parameters())


def test_ctc_weight_scales_the_term_and_zero_removes_it():
    batch = make_batch()
    one = build("carat").eval()(batch).loss_parts
    two = build("carat", ctc_weight=2.0).eval()(batch).loss_parts
    torch.testing.assert_close(two["ctc_audio"], 2 * one["ctc_audio"])
    off = build("carat", ctc_weight=0.0).eval()(batch)
    assert not any(name.startswith("ctc_") for name in off.loss_parts)
    torch.testing.assert_close(off.logits, build("carat").eval()(batch).logits)  # a loss term only


def test_ctc_ignores_padding_and_missing_modalities():
    model = build("carat").eval()
    batch = make_batch(seed=5)
    with torch.no_grad():
        reference = model(batch).loss_parts
        padded = model(pad_batch(batch, extra=5)).loss_parts
    for m in DIMS:
        torch.testing.assert_close(padded[f"ctc_{m}"], reference[f"ctc_{m}"])
    lengths = {"text": [5, 0, 4], "audio": [0, 0, 0], "video": [1, 1, 2]}
    parts = model(make_batch(lengths)).loss_parts
    assert parts["ctc_audio"] == 0 and all(torch.isfinite(v) for v in parts.values())


# --------------------------------------------------------------------------------------------
# Memory-efficient attention
# --------------------------------------------------------------------------------------------


def test_fused_attention_equals_the_explicit_one():
    generator = torch.Generator().manual_seed(0)
    query, key, value = (torch.randn(3, 2, n, 4, generator=generator) for n in (5, 7, 7))
    key_mask = torch.tensor([[True] * 7, [True] * 3 + [False] * 4, [False] * 7])  # row 2: missing modality
    query_mask = torch.tensor([[True] * 5, [True] * 2 + [False] * 3, [True] * 5])
    attention = CrossModalAttention()
    explicit, weights = attention(query, key, value, key_mask, query_mask, need_weights=True)
    fused, none = attention(query, key, value, key_mask, query_mask, need_weights=False)
    assert none is None and weights.shape == (3, 2, 5, 7)
    torch.testing.assert_close(fused, explicit, atol=1e-6, rtol=1e-5)
    assert (fused[2] == 0).all() and (fused[1, 2:] == 0).all()


@pytest.mark.parametrize("name", ["cma", "cmaf"])
def test_models_without_maps_give_the_same_outputs(name):
    batch = make_batch(seed=6)
    with_maps = build(name).eval()(batch)
    without = build(name, output_attentions=False).eval()(batch)
    assert without.attentions == {} and with_maps.attentions
    torch.testing.assert_close(without.logits, with_maps.logits, atol=1e-5, rtol=1e-5)
    model = build(name, output_attentions=False)
    model(make_batch()).loss.backward()
    assert all(p.grad is not None for p in model.parameters())


# --------------------------------------------------------------------------------------------
# Seed 1 video encoder
# --------------------------------------------------------------------------------------------

VIDEO = dict(video_encoder_blocks=2, video_encoder_dim=8, video_encoder_heads=2, video_encoder_feedforward=16,
             video_encoder_dropout=0.0, video_encoder_max_frames=16)  # fmt: skip


@pytest.mark.parametrize("name", ["agf", "cmaf"])
def test_video_encoder_is_off_by_default_and_trains_when_on(name):
    assert build(name).video_encoder is None
    model = build(name, **VIDEO)
    assert isinstance(model.video_encoder, TemporalVideoEncoder)
    assert len(model.video_encoder.layers.layers) == 2
    model.train()
    model(make_batch()).loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.video_encoder.parameters())
    # Without video in the data there is nothing to encode.
    assert build(name, dims={"text": 8, "audio": 6}, **VIDEO).video_encoder is None


@pytest.mark.parametrize("name", ["agf", "cmaf"])
def test_video_encoder_ignores_padding_and_missing_video(name):
    model = build(name, **VIDEO).eval()
    batch = make_batch(seed=7)
    with torch.no_grad():
        torch.testing.assert_close(model(pad_batch(batch, 3)).logits, model(batch).logits, atol=1e-5, rtol=1e-5)
    lengths = {"text": [5, 3, 4], "audio": [2, 2, 2], "video": [4, 0, 0]}
    missing = make_batch(lengths)
    encoded = model.video_encoder(missing.modalities["video"].values, missing.modalities["video"].mask)
    assert torch.isfinite(encoded).all() and (encoded[1:] == 0).all() and (encoded[0] != 0).any()
    output = model(missing)
    assert torch.isfinite(output.logits).all() and (output.gate_weights[1:, -1] == 0).all()


def test_video_encoder_refuses_more_frames_than_positions():
    encoder = TemporalVideoEncoder(5, VideoEncoderConfig(**VIDEO))
    with pytest.raises(ValueError, match="video_encoder_max_frames"):
        encoder(torch.zeros(1, 17, 5), torch.ones(1, 17, dtype=torch.bool))
    with pytest.raises(ValueError, match="divisible"):
        MODELS["cmaf"][0](video_encoder_blocks=6, video_encoder_dim=504, video_encoder_heads=10)


def test_seed_preset_video_encoder_size():
    model = build_model("cmaf", {"text": 768, "audio": 768, "video": 768}, 7, "single_label", video_encoder_blocks=6)
    encoder = model.video_encoder
    layer = encoder.layers.layers[0]
    assert len(encoder.layers.layers) == 6 and encoder.output_dim == 504
    assert layer.self_attn.num_heads == 12 and layer.dropout.p == pytest.approx(0.185)


# --------------------------------------------------------------------------------------------
# Metadata in the cross-modal attention
# --------------------------------------------------------------------------------------------


def test_metadata_in_attention_starts_as_the_plain_model_and_then_uses_the_speaker():
    batch = make_batch(seed=8)
    plain = build("cmaf").eval()
    conditioned = build("cmaf", metadata_in_attention=True).eval()
    assert set(conditioned.metadata_queries) == set(DIMS)
    with torch.no_grad():
        torch.testing.assert_close(conditioned(batch).logits, plain(batch).logits)  # zero-initialised
        for linear in conditioned.metadata_queries.values():
            linear.weight.normal_()
        before = conditioned(batch).attentions["text_to_audio"]
        other_speaker = dataclasses.replace(batch, metadata_categorical=(batch.metadata_categorical + 1) % 5)
        after = conditioned(other_speaker).attentions["text_to_audio"]
    assert not torch.allclose(before, after)
    # Gradient reaches the metadata path through the attention.
    model = build("cmaf", metadata_in_attention=True)
    model(batch).loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.metadata_queries.parameters())


def test_metadata_in_attention_without_metadata_changes_nothing():
    """MOSEI has no metadata: the option is a documented no-op."""
    torch.manual_seed(0)
    model = build_model("cmaf", DIMS, N_CLASSES, "single_label", metadata=None, metadata_in_attention=True, **TINY["cmaf"])
    assert not hasattr(model, "metadata_queries")


# --------------------------------------------------------------------------------------------
# Seed presets
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "preset, model_name, dims, n_classes, task",
    [
        ("seed1-cmaf.yaml", "cmaf", {"text": 768, "audio": 768, "video": 768}, 7, "single_label"),
        ("seed2-carat.yaml", "carat", {"text": 300, "audio": 74, "video": 35}, 6, "multi_label"),
    ],
)
def test_seed_presets_are_valid_and_match_the_model_defaults(preset, model_name, dims, n_classes, task):
    from fuse.options import parse_options

    text = (ROOT / "config" / "train" / preset).read_text()
    options = yaml.safe_load(text)
    assert options["model"] == model_name
    parse_options(options, source=preset)  # every key is a training option with a valid value
    # Every setting line names its seed section.
    for line in text.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#") and not stripped.endswith(":"):
            assert "#" in stripped and ("seed" in stripped.lower() or "not in the seed" in stripped.lower()), line
    model = build_model(model_name, dims, n_classes, task, **options.get("model_config", {}))
    defaults = MODELS[model_name][0].default_training
    for key in ("lr", "weight_decay", "batch_size", "epochs", "warmup_ratio", "grad_clip", "scheduler"):
        assert options[key] == getattr(defaults, key), key
    if model_name == "cmaf":
        assert model.video_encoder is not None and len(model.video_encoder.layers.layers) == 6
        assert (options["drop_last"], options["num_workers"], options["pin_memory"]) == (True, 2, True)
    else:
        assert options["coef_lr"] == 0.1 and set(model.aligners) == {"text", "audio", "video"}
        assert options["max_len"] == {"text": None, "audio": None, "video": None}


@pytest.mark.slow
def test_carat_trains_end_to_end_with_ctc_and_full_length_sequences(tmp_path):
    """The recipe with carat's seed-2 defaults: CTC terms logged, no frame truncated (audio
    sequences longer than the old 1500-frame cap), bert_adam schedule."""
    import csv
    import json

    from fuse.testing.synthetic_cache import make_synthetic_cache
    from fuse.training import TrainOptions, train

    sets = {"text.synthetic": ("text", 8, 20, 30), "audio.synthetic": ("audio", 6, 1600, 1700), "video.synthetic": ("video", 5, 20, 40)}
    cache = make_synthetic_cache(tmp_path / "m.zarr", multi_label=True, classes=("happy", "sad", "anger"), feature_sets=sets, n_dialogues=6, turns=4)
    small = {"hidden_size": 16, "num_heads": 2, "intermediate_size": 16, "text_layers": 1, "audio_layers": 1, "video_layers": 1,
             "proj_size": 8, "queue_size": 64, "pos_weight": None, "ctc_lstm_layers": 1, "ctc_min_target_length": 4}  # fmt: skip
    options = TrainOptions(cache=str(cache), out=str(tmp_path / "run"), model="carat", epochs=1, batch_size=8, progress=False, tensorboard=False, model_config=small)
    train(options, echo=lambda *_: None)
    data = json.loads((tmp_path / "run" / "data.json").read_text())
    assert data["spec"]["max_len"] == {"text": None, "audio": None, "video": None}
    assert data["summary"]["truncated_utterances"] == {"text": 0, "audio": 0, "video": 0}
    row = next(csv.DictReader(open(tmp_path / "run" / "log.csv")))
    assert {"train_ctc_text", "train_ctc_audio", "train_ctc_video"} <= set(row) and float(row["train_ctc_audio"]) > 0
    config = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert (config["scheduler"], config["coef_lr"], config["exclude_norm_and_bias"]) == ("bert_adam", 0.1, True)
