"""Fusion models (fuse.models): forward/backward, learning, masking, missing modalities, registry.

Every test runs on tiny random batches on CPU; the models are built with small hidden sizes
through `build_model`, the same path the training loop uses.
"""
from __future__ import annotations

from dataclasses import fields

import pytest
import torch

from fuse.batch import Batch, ModalityInput
from fuse.models import MODELS, MetadataSpec, ModelOutput, TrainingDefaults, build_model
from fuse.models.carat import AdaptiveCTCAlignment, bound_length
from fuse.models.context import compact_to_front, keep_last_turns

DIMS = {"text": 8, "audio": 6, "video": 5}
N_CLASSES = 3

TINY = {
    "cma": dict(num_heads=2, head_dim=4, hidden_size=16, dropout=0.0),
    "agf": dict(fusion_dim=12, hidden_size=16, dropout=0.0, metadata_embedding_dim=3, metadata_numeric_dim=2),
    "cmaf": dict(fusion_dim=12, num_heads=2, hidden_size=16, dropout=0.0, metadata_embedding_dim=3),
    "late": dict(hidden_size=16, dropout=0.0),
    "context": dict(context_hidden_size=8, hidden_size=16, dropout=0.0),
    "carat": dict(
        hidden_size=16,
        num_heads=2,
        intermediate_size=16,
        dropout=0.0,
        text_layers=1,
        audio_layers=1,
        video_layers=1,
        proj_size=4,
        queue_size=64,
        ctc_target_length=6,
        ctc_min_target_length=2,
        ctc_compression_ratio=0.5,
        pos_weight=None,
    ),
}
TASK = {name: ("multi_label" if name == "carat" else "single_label") for name in MODELS}
METADATA = MetadataSpec(categorical=(("speaker", 4),), n_numeric=1)


@pytest.fixture(autouse=True)
def single_thread():
    """Tiny tensors gain nothing from intra-op threads; one thread avoids contention on shared CI."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def modality(lengths: list[int], dim: int, length: int | None = None, generator=None) -> ModalityInput:
    """Random features, zero at padding; a length of 0 means the modality is missing."""
    length = max(max(lengths), 1) if length is None else length
    mask = torch.arange(length)[None, :] < torch.tensor(lengths)[:, None]
    values = torch.randn(len(lengths), length, dim, generator=generator) * mask[..., None]
    return ModalityInput(values, mask, mask.any(dim=1))


def make_batch(
    lengths: dict[str, list[int]] | None = None,
    seed: int = 0,
    context_turns: list[int] | None = None,
) -> Batch:
    generator = torch.Generator().manual_seed(seed)
    lengths = lengths or {"text": [5, 3, 4, 2, 6, 1], "audio": [7, 2, 5, 6, 3, 4], "video": [4, 4, 1, 3, 2, 5]}
    batch_size = len(lengths["text"])
    modalities = {m: modality(lens, DIMS[m], generator=generator) for m, lens in lengths.items()}
    context_turns = context_turns or [3 - i % 3 for i in range(batch_size)]
    context_mask = torch.arange(3)[None, :] >= (3 - torch.tensor(context_turns))[:, None]  # left padded
    context_values = torch.randn(batch_size, 3, DIMS["text"], generator=generator) * context_mask[..., None]
    labels_multi = (torch.rand(batch_size, N_CLASSES, generator=generator) > 0.5).float()
    labels_multi[0] = torch.tensor([1.0, 0.0, 1.0])
    return Batch(
        modalities=modalities,
        index=torch.arange(batch_size),
        label=torch.arange(batch_size) % N_CLASSES,
        labels_multi=labels_multi,
        metadata_categorical=torch.randint(0, 5, (batch_size, 1), generator=generator),
        metadata_numeric=torch.randn(batch_size, 1, generator=generator),
        context={"text": ModalityInput(context_values, context_mask, context_mask.any(dim=1))},
    )


def build(name: str, dims=DIMS, **overrides):
    torch.manual_seed(0)
    metadata = METADATA if name in ("agf", "cmaf") else None
    return build_model(name, dims, N_CLASSES, TASK[name], metadata=metadata, **{**TINY[name], **overrides})


def pad_batch(batch: Batch, extra: int) -> Batch:
    """The same batch with `extra` more padding frames (mask False, zero features) everywhere."""

    def pad(item: ModalityInput) -> ModalityInput:
        b, _, d = item.values.shape
        return ModalityInput(
            torch.cat([item.values, item.values.new_zeros(b, extra, d)], dim=1),
            torch.cat([item.mask, item.mask.new_zeros(b, extra)], dim=1),
            item.present,
        )

    padded_context = {m: pad(item) for m, item in batch.context.items()}
    # Context is left padded: padding goes in front.
    padded_context = {
        m: ModalityInput(item.values.roll(extra, dims=1), item.mask.roll(extra, dims=1), item.present)
        for m, item in padded_context.items()
    }
    return Batch(
        modalities={m: pad(item) for m, item in batch.modalities.items()},
        index=batch.index,
        label=batch.label,
        labels_multi=batch.labels_multi,
        metadata_categorical=batch.metadata_categorical,
        metadata_numeric=batch.metadata_numeric,
        context=padded_context,
    )


# --------------------------------------------------------------------------------------------
# Every model
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(MODELS))
def test_forward_backward_reaches_every_parameter(name):
    model = build(name)
    model.train()
    output = model(make_batch())
    assert isinstance(output, ModelOutput)
    assert output.logits.shape == (6, N_CLASSES)
    assert output.loss is not None and output.loss.ndim == 0 and torch.isfinite(output.loss)
    assert output.loss_parts and all(not v.requires_grad for v in output.loss_parts.values())
    output.loss.backward()
    without_grad = [n for n, p in model.named_parameters() if p.grad is None]
    assert not without_grad, f"parameters without gradient: {without_grad}"
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("name", sorted(MODELS))
def test_loss_falls_when_overfitting_a_fixed_batch(name):
    model = build(name)
    model.train()
    batch = make_batch(seed=1)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        optimiser.zero_grad()
        loss = model(batch).loss
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert sum(losses[-3:]) / 3 < 0.7 * sum(losses[:3]) / 3, losses


@pytest.mark.parametrize("name", sorted(MODELS))
def test_padding_does_not_change_outputs(name):
    model = build(name).eval()
    batch = make_batch(seed=2)
    with torch.no_grad():
        reference = model(batch)
        padded = model(pad_batch(batch, extra=4))
    torch.testing.assert_close(padded.logits, reference.logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(padded.loss, reference.loss, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_missing_modalities_give_finite_outputs(name):
    lengths = {"text": [5, 0, 4, 2, 0, 3], "audio": [0, 2, 5, 0, 3, 4], "video": [4, 0, 0, 3, 2, 0]}
    model = build(name)
    output = model(make_batch(lengths))
    assert torch.isfinite(output.logits).all()
    assert torch.isfinite(output.loss)
    output.loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_fully_masked_batch_gives_finite_loss(name):
    lengths = {m: [0, 0, 0] for m in DIMS}
    batch = make_batch(lengths, context_turns=[1, 1, 1])
    for item in batch.context.values():
        item.mask.zero_()
        item.values.zero_()
        item.present.zero_()
    model = build(name)
    for mode in (model.train, model.eval):
        mode()
        output = model(batch)
        assert torch.isfinite(output.logits).all()
        assert torch.isfinite(output.loss)
    model.train()
    model(batch).loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_no_labels_means_no_loss(name):
    batch = make_batch()
    batch.label, batch.labels_multi = None, None
    output = build(name).eval()(batch)
    assert output.loss is None and output.loss_parts == {}
    assert torch.isfinite(output.logits).all()


@pytest.mark.parametrize("name", sorted(MODELS))
def test_config_has_training_defaults(name):
    config_class, _ = MODELS[name]
    defaults = config_class.default_training
    assert isinstance(defaults, TrainingDefaults)
    keys = defaults.as_dict().keys()
    for key in ("lr", "weight_decay", "batch_size", "epochs", "patience", "warmup_ratio", "grad_clip", "amp"):
        assert key in keys
    assert "default_training" not in {f.name for f in fields(config_class)}


def test_seed_training_defaults():
    cmaf = MODELS["cmaf"][0].default_training
    assert (cmaf.lr, cmaf.weight_decay, cmaf.batch_size, cmaf.epochs, cmaf.patience) == (5.61e-5, 3.75e-4, 4, 15, 5)
    assert (cmaf.warmup_ratio, cmaf.grad_clip, cmaf.amp) == (0.222, 1.0, True)
    config = MODELS["cmaf"][0]()
    assert (config.focal_alpha, config.focal_gamma, config.fusion_dim, config.num_heads) == (1.148, 1.582, 504, 12)
    assert (config.dropout, config.hidden_size) == (0.185, 512)
    carat = MODELS["carat"][0].default_training
    assert (carat.lr, carat.warmup_ratio, carat.batch_size, carat.epochs) == (3e-5, 0.2, 64, 15)
    assert (carat.lr_decay_per_epoch, carat.threshold) == (0.98, 0.2)


# --------------------------------------------------------------------------------------------
# Gating
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["agf", "cmaf"])
def test_gate_weights_sum_to_one_over_present_modalities(name):
    lengths = {"text": [5, 0, 4, 2, 0, 3], "audio": [0, 2, 5, 0, 3, 4], "video": [4, 0, 0, 3, 2, 0]}
    batch = make_batch(lengths)
    output = build(name)(batch)
    present = torch.stack([batch.modalities[m].present for m in output.modality_names], dim=1)
    assert output.modality_names == ("text", "audio", "video")
    assert output.gate_weights.shape == (6, 3)
    assert (output.gate_weights[~present] == 0).all()
    torch.testing.assert_close(output.gate_weights.sum(dim=1), torch.ones(6))
    assert (output.gate_weights[present] > 0).all()


def test_gated_fusion_ignores_features_of_a_missing_modality():
    """Whatever a missing modality's padded values are, they cannot reach the output."""
    model = build("agf").eval()
    batch = make_batch({"text": [5, 3], "audio": [0, 2], "video": [4, 0]})
    reference = model(batch).logits
    batch.modalities["audio"].values[0] = 100.0  # garbage under an all-False mask
    torch.testing.assert_close(model(batch).logits, reference)


def test_cmaf_text_only_and_any_subset():
    for dims in ({"text": 8}, {"audio": 6}, {"text": 8, "video": 5}, DIMS):
        model = build("cmaf", dims={m: DIMS[m] for m in dims})
        output = model(make_batch())
        assert output.logits.shape == (6, N_CLASSES)
        assert len(output.modality_names) == len(dims)
        torch.testing.assert_close(output.gate_weights.sum(dim=1), torch.ones(6))
        n_pairs = len(dims) * (len(dims) - 1)
        assert len(output.attentions) == n_pairs


def test_metadata_changes_the_gates():
    model = build("agf").eval()
    batch = make_batch()
    reference = model(batch).gate_weights
    batch.metadata_categorical = (batch.metadata_categorical + 1) % 5
    assert not torch.allclose(model(batch).gate_weights, reference)


def test_metadata_out_of_range_is_a_clear_error():
    batch = make_batch()
    batch.metadata_categorical[2, 0] = 9
    with pytest.raises(ValueError, match="speaker.*outside 0..4"):
        build("agf")(batch)
    batch.metadata_categorical = None
    with pytest.raises(ValueError, match="categorical"):
        build("agf")(batch)


def test_agf_without_metadata():
    torch.manual_seed(0)
    model = build_model("agf", DIMS, N_CLASSES, "single_label", **TINY["agf"])
    batch = make_batch()
    batch.metadata_categorical = batch.metadata_numeric = None
    assert torch.isfinite(model(batch).loss)


# --------------------------------------------------------------------------------------------
# Cross-modal attention
# --------------------------------------------------------------------------------------------


def test_cma_attention_maps_and_missing_audio():
    model = build("cma").eval()
    batch = make_batch({"text": [5, 3, 4], "audio": [7, 0, 2], "video": [1, 1, 1]})
    output = model(batch)
    text_to_audio = output.attentions["text_to_audio"]
    audio_to_text = output.attentions["audio_to_text"]
    assert text_to_audio.shape == (3, 2, 5, 7) and audio_to_text.shape == (3, 2, 7, 5)
    # Rows of real text tokens sum to 1 over real audio frames; padding gets exactly 0.
    torch.testing.assert_close(text_to_audio[0, :, :5].sum(-1), torch.ones(2, 5))
    assert (text_to_audio[2, :, :, 2:] == 0).all()
    # Missing audio: no attention at all, and the audio halves of the fused vector are zero.
    assert (text_to_audio[1] == 0).all() and (audio_to_text[1] == 0).all()
    attended = 2 * 4
    fused = output.fused
    assert (fused[1, :attended] == 0).all()  # T_att (from audio frames) and A_att
    assert (fused[1, 2 * attended + DIMS["text"] :] == 0).all()  # A_raw
    assert (fused[1, 2 * attended : 2 * attended + DIMS["text"]] != 0).any()  # T_raw


def test_focal_loss_is_the_seed_default_for_cma():
    model = build("cma")
    batch = make_batch()
    output = model(batch)
    from fuse.losses import focal_loss

    torch.testing.assert_close(output.loss, focal_loss(output.logits, batch.label, alpha=1.148, gamma=1.582))
    model_ce = build("late")
    out_ce = model_ce(batch)
    torch.testing.assert_close(out_ce.loss, torch.nn.functional.cross_entropy(out_ce.logits, batch.label))


def test_multi_label_models_use_bce():
    torch.manual_seed(0)
    model = build_model("cmaf", DIMS, N_CLASSES, "multi_label", **TINY["cmaf"], class_weights=(1.0, 2.0, 3.0))
    batch = make_batch()
    output = model(batch)
    expected = torch.nn.functional.binary_cross_entropy_with_logits(
        output.logits, batch.labels_multi, pos_weight=torch.tensor([1.0, 2.0, 3.0])
    )
    torch.testing.assert_close(output.loss, expected)


# --------------------------------------------------------------------------------------------
# Context model
# --------------------------------------------------------------------------------------------


def test_context_left_or_right_padding_is_the_same():
    model = build("context").eval()
    batch = make_batch()
    reference = model(batch).logits
    context = batch.context["text"]
    # Move every row's real turns to the front (right padding).
    values, _ = compact_to_front(context.values, context.mask)
    mask, _ = compact_to_front(context.mask.unsqueeze(-1), context.mask)
    batch.context = {"text": ModalityInput(values, mask.squeeze(-1), context.present)}
    torch.testing.assert_close(model(batch).logits, reference)


def test_context_keeps_the_last_turns():
    mask = torch.tensor([[True, True, True, True], [False, True, True, True], [False, False, False, True]])
    kept = keep_last_turns(mask, 2)
    assert kept.tolist() == [[False, False, True, True], [False, False, True, True], [False, False, False, True]]


def test_context_uses_the_context():
    model = build("context").eval()
    batch = make_batch()
    reference = model(batch).logits
    batch.context["text"].values[:, -2] += 1.0  # change the turn before the current one
    changed = model(batch).logits
    assert not torch.allclose(changed[0], reference[0])  # row 0 has 3 real turns


def test_context_model_requires_context():
    batch = make_batch()
    batch.context = None
    with pytest.raises(ValueError, match="context"):
        build("context")(batch)


# --------------------------------------------------------------------------------------------
# CARAT
# --------------------------------------------------------------------------------------------


def test_carat_bound_length_pools_long_sequences():
    values = torch.arange(10, dtype=torch.float32).view(1, 10, 1).repeat(2, 1, 1)
    mask = torch.tensor([[True] * 10, [True] * 3 + [False] * 7])
    pooled, pooled_mask = bound_length(values, mask, limit=4)
    assert pooled.shape == (2, 4, 1)
    # Row 0: 10 frames, stride 3 -> windows [0,1,2] [3,4,5] [6,7,8] [9].
    assert pooled[0, :, 0].tolist() == [1.0, 4.0, 7.0, 9.0] and pooled_mask[0].all()
    # Row 1 is within the limit: unchanged.
    assert pooled[1, :3, 0].tolist() == [0.0, 1.0, 2.0] and pooled_mask[1].tolist() == [True, True, True, False]


@pytest.mark.parametrize("aligned", [(), ("audio", "video")])
def test_carat_handles_sequences_longer_than_the_position_limit(aligned):
    model = build(
        "carat", text_max_positions=4, audio_max_positions=5, video_max_positions=3, aligned_modalities=aligned
    )
    batch = make_batch({"text": [12, 3], "audio": [20, 7], "video": [9, 0]})
    output = model(batch)
    assert torch.isfinite(output.loss)
    assert output.attentions["text_label_attention"].shape == (2, N_CLASSES, 1 + 3)
    # Audio is pooled to 4 frames; alignment then compresses to round(4 * 0.5) = 2 positions.
    audio_length = 2 if aligned else 4
    assert output.attentions["audio_label_attention"].shape == (2, N_CLASSES, 1 + audio_length)
    assert output.attentions["video_label_attention"].shape == (2, N_CLASSES, 1 + 2)


def test_carat_padding_past_the_position_limit_changes_nothing():
    """Padding that pushes the padded length over the limit takes the pooling path with stride 1."""
    model = build("carat", text_max_positions=8, audio_max_positions=9, aligned_modalities=("audio",)).eval()
    batch = make_batch(seed=4)  # text lengths <= 6 < 8 - 1, audio <= 7 < 9 - 1
    with torch.no_grad():
        reference = model(batch).logits
        padded = model(pad_batch(batch, extra=6)).logits
    torch.testing.assert_close(padded, reference, atol=1e-5, rtol=1e-5)


def test_carat_alignment_lengths_are_adaptive():
    aligner = AdaptiveCTCAlignment(3, max_target_length=5, compression_ratio=0.5, min_target_length=2, num_layers=1)
    mask = torch.arange(12)[None, :] < torch.tensor([12, 6, 1, 0])[:, None]
    values = torch.randn(4, 12, 3) * mask[..., None]
    aligned, aligned_mask, probs = aligner(values, mask)
    assert aligned_mask.sum(1).tolist() == [5, 3, 2, 0]  # min(max(round(len/2), 2), 5), 0 when missing
    assert aligned.shape == (4, 5, 3) and probs.shape == (4, 5, 12)
    assert (probs[1, 3:] == 0).all() and (probs[1, :, 6:] == 0).all()
    assert (aligned[3] == 0).all()


def test_carat_prototype_update_matches_the_published_loop():
    model = build("carat")
    generator = torch.Generator().manual_seed(3)
    batch_size, n_modalities, proj = 5, 3, model.config.proj_size
    latent = torch.randn(batch_size, n_modalities, N_CLASSES, proj, generator=generator)
    latent = torch.nn.functional.normalize(latent, dim=-1)
    present = torch.rand(batch_size, n_modalities, generator=generator) > 0.3
    targets = (torch.rand(batch_size, N_CLASSES, generator=generator) > 0.5).float()
    model.positive_prototypes.normal_()
    model.negative_prototypes.normal_()
    expected_pos, expected_neg = model.positive_prototypes.clone(), model.negative_prototypes.clone()
    m = model.config.prototype_momentum
    for b in range(batch_size):
        for k in range(n_modalities):
            if not present[b, k]:
                continue
            for c in range(N_CLASSES):
                target = expected_pos if targets[b, c] == 1 else expected_neg
                target[k, c] = target[k, c] * m + (1 - m) * latent[b, k, c]
    model._update_prototypes(latent, present, targets)
    torch.testing.assert_close(model.positive_prototypes, expected_pos)
    torch.testing.assert_close(model.negative_prototypes, expected_neg)


def test_carat_queue_fills_and_wraps():
    model = build("carat", queue_size=10)
    features = torch.nn.functional.normalize(torch.randn(7, 4), dim=-1)
    model._enqueue(features, torch.arange(7))
    assert model.queue_pointer.item() == 7 and (model.queue_labels[:7] == torch.arange(7)).all()
    assert (model.queue_labels[7:] == -1).all()
    model._enqueue(features[:5], torch.arange(10, 15))
    assert model.queue_pointer.item() == 2
    assert model.queue_labels.tolist() == [13, 14, 2, 3, 4, 5, 6, 10, 11, 12]
    queued, labels = model._queue_contents()
    assert queued.shape == (10, 4)


def test_carat_training_updates_memory_and_eval_does_not():
    model = build("carat")
    batch = make_batch()
    model.eval()
    model(batch)
    assert (model.queue_labels == -1).all() and (model.positive_prototypes == 0).all()
    model.train()
    model(batch)
    assert (model.queue_labels >= 0).sum() > 0 and (model.positive_prototypes != 0).any()


def test_carat_loss_parts_follow_the_weights():
    model = build("carat", lsr_clf_weight=0.0, recon_clf_weight=0.5)
    parts = model(make_batch()).loss_parts
    assert "lsr_clf" not in parts and "recon_clf" in parts
    expected = {"recon_clf", "aug_clf", "final_clf", "agg_clf", "shuffle_clf", "contrastive", "recon_mse", "aug_mse"}
    expected |= {"ctc_text", "ctc_audio", "ctc_video"}  # ctc_weight 1.0, every modality aligned (issue 16)
    assert set(parts) == expected
    model.eval()
    assert "shuffle_clf" not in model(make_batch()).loss_parts


def test_carat_scores_are_sigmoid_of_logits_in_0_1():
    model = build("carat").eval()
    logits = model(make_batch()).logits
    scores = torch.sigmoid(logits)
    assert ((scores > 0) & (scores < 1)).all()


def test_carat_default_pos_weight_needs_six_classes():
    with pytest.raises(ValueError, match="pos_weight"):
        build_model("carat", DIMS, 4, "multi_label", **{**TINY["carat"], "pos_weight": (1.0, 1.1, 1.2, 2.5, 1.3, 3.0)})
    seed_pos_weight = {k: v for k, v in TINY["carat"].items() if k != "pos_weight"}
    model = build_model("carat", DIMS, 6, "multi_label", **seed_pos_weight)
    assert model.pos_weight.tolist() == pytest.approx([1.0, 1.1, 1.2, 2.5, 1.3, 3.0])


# --------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------


def test_registry_names():
    assert set(MODELS) == {"cma", "agf", "cmaf", "carat", "late", "context"}


def test_build_model_rejects_unknown_config_key():
    with pytest.raises(ValueError, match="unknown config key.*'hiden_size'"):
        build_model("cmaf", DIMS, N_CLASSES, "single_label", hiden_size=3)


def test_build_model_rejects_task_mismatch():
    with pytest.raises(ValueError, match="does not support task 'single_label'"):
        build_model("carat", DIMS, N_CLASSES, "single_label")
    with pytest.raises(ValueError, match="unknown task"):
        build_model("late", DIMS, N_CLASSES, "regression")


def test_build_model_rejects_missing_modalities():
    with pytest.raises(ValueError, match=r"needs modalities \['audio', 'text'\].*missing \['audio'\]"):
        build_model("cma", {"text": 8}, N_CLASSES, "single_label")
    with pytest.raises(ValueError, match="at least 2 modalities"):
        build_model("carat", {"text": 8}, N_CLASSES, "multi_label")
    with pytest.raises(ValueError, match="unknown modalities"):
        build_model("late", {"txt": 8}, N_CLASSES, "single_label")


def test_build_model_rejects_unknown_model_and_bad_values():
    with pytest.raises(ValueError, match="unknown model 'mult'"):
        build_model("mult", DIMS, N_CLASSES, "single_label")
    with pytest.raises(ValueError, match="loss must be"):
        build_model("late", DIMS, N_CLASSES, "single_label", loss="hinge")
    with pytest.raises(ValueError, match="class_weights has 2 entries"):
        build_model("late", DIMS, N_CLASSES, "single_label", class_weights=[1.0, 2.0])


def test_batch_missing_a_built_modality_is_a_clear_error():
    batch = make_batch()
    del batch.modalities["video"]
    with pytest.raises(ValueError, match="'video'"):
        build("late")(batch)


def with_future(batch: Batch, turns: list[int], width: int = 3, seed: int = 1) -> Batch:
    """`batch` plus right-padded following turns ("text_future"), `turns[i]` real ones per row."""
    generator = torch.Generator().manual_seed(seed)
    mask = torch.arange(width)[None, :] < torch.tensor(turns)[:, None]
    values = torch.randn(len(turns), width, DIMS["text"], generator=generator) * mask[..., None]
    batch.context = {**batch.context, "text_future": ModalityInput(values, mask, mask.any(dim=1))}
    return batch


@pytest.mark.parametrize("name, options", [
    ("context", dict(context_window="both")),
    ("context", dict(context_window="both", context_projection_size=6, max_future_turns=2)),
    ("cmaf", dict(dialogue_context="both", dialogue_context_hidden_size=4)),
])
def test_future_turns_change_the_output_only_when_enabled(name, options):
    turns = [2, 0, 3, 1, 3, 0]
    batch = with_future(make_batch(), turns)
    past_only = build(name).eval()
    both = build(name, **options).eval()
    reference_past, reference_both = past_only(batch).logits, both(batch).logits
    changed = with_future(make_batch(), turns)
    changed.context["text_future"].values[:, 0] += 1.0  # change the next turn
    torch.testing.assert_close(past_only(changed).logits, reference_past)  # future turns not read
    after = both(changed).logits
    for row, n in enumerate(turns):
        if n:
            assert not torch.allclose(after[row], reference_both[row])
        else:  # a row without following turns is unaffected
            torch.testing.assert_close(after[row], reference_both[row])


def test_bidirectional_context_ignores_padding_and_respects_the_turn_limits():
    model = build("context", context_window="both", max_context_turns=2, max_future_turns=1).eval()
    batch = with_future(make_batch(), [2, 1, 3, 0, 2, 1])
    reference = model(batch).logits
    # more padding: left of the past turns, right of the following turns
    past, future = batch.context["text"], batch.context["text_future"]
    zeros = lambda item, n: (item.values.new_zeros(item.values.shape[0], n, item.values.shape[2]), item.mask.new_zeros(item.mask.shape[0], n))
    pv, pm = zeros(past, 2)
    fv, fm = zeros(future, 3)
    padded = dict(
        text=ModalityInput(torch.cat([pv, past.values], 1), torch.cat([pm, past.mask], 1), past.present),
        text_future=ModalityInput(torch.cat([future.values, fv], 1), torch.cat([future.mask, fm], 1), future.present),
    )
    batch.context = padded
    torch.testing.assert_close(model(batch).logits, reference)
    # turns beyond the limits are not read: the oldest past turn and the second following turn
    batch.context["text"].values[:, -3] += 5.0
    batch.context["text_future"].values[:, 1] += 5.0
    torch.testing.assert_close(model(batch).logits, reference)
    batch.context["text_future"].values[:, 0] += 5.0  # the next turn is read
    assert not torch.allclose(model(batch).logits[0], reference[0])


def test_bidirectional_context_needs_the_following_turns():
    with pytest.raises(ValueError, match="text_future"):
        build("context", context_window="both")(make_batch())
    with pytest.raises(ValueError, match="context"):
        build("cmaf", dialogue_context="past")(Batch(**{**make_batch().__dict__, "context": None}))
    with pytest.raises(ValueError, match="context_window"):
        build("context", context_window="future")


def test_late_with_hidden_size_0_is_a_linear_classifier():
    model = build("late", hidden_size=0)
    batch = make_batch()
    linear_layers = [m for m in model.head.modules() if isinstance(m, torch.nn.Linear)]
    assert len(linear_layers) == 1 and linear_layers[0].in_features == sum(DIMS.values())
    model.eval()
    output = model(batch)
    assert output.logits.shape == (len(batch.label), N_CLASSES)
    # No hidden layer: the logits are one affine map of the concatenated pooled features.
    torch.testing.assert_close(output.logits, linear_layers[0](output.fused))
    output.loss.backward()
    with pytest.raises(ValueError, match="hidden_size must be >= 0"):
        build("late", hidden_size=-1)
