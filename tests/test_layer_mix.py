"""Learned layer weights (fuse/models/layer_mix.py) and the context model's `layer_weights`."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from fuse.batch import Batch, ModalityInput
from fuse.models import build_model
from fuse.models.layer_mix import LayerMix, concatenated_layers, with_layer_count

N_LAYERS, LAYER_DIM = 3, 4
TINY_CONTEXT = dict(context_hidden_size=8, hidden_size=16, dropout=0.0)


@pytest.fixture(autouse=True)
def single_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def test_mix_is_the_softmax_weighted_sum_of_the_layer_blocks_times_the_scale():
    mix = LayerMix(N_LAYERS, N_LAYERS * LAYER_DIM)
    with torch.no_grad():
        mix.layer_logits.copy_(torch.tensor([0.5, -1.0, 2.0]))
        mix.scale.fill_(1.7)
    x = torch.randn(2, 5, N_LAYERS * LAYER_DIM)
    w = torch.softmax(torch.tensor([0.5, -1.0, 2.0]), dim=0)
    # the extraction concatenates the layers in order: block k is x[..., k*D:(k+1)*D]
    manual = 1.7 * sum(w[k] * x[..., k * LAYER_DIM:(k + 1) * LAYER_DIM] for k in range(N_LAYERS))
    torch.testing.assert_close(mix(x), manual)
    assert mix(x).shape == (2, 5, LAYER_DIM)


def test_mix_starts_as_the_plain_average_and_can_omit_the_scale():
    mix = LayerMix(N_LAYERS, N_LAYERS * LAYER_DIM, learn_scale=False)
    x = torch.randn(4, N_LAYERS * LAYER_DIM)
    torch.testing.assert_close(mix(x), x.view(4, N_LAYERS, LAYER_DIM).mean(dim=1))
    assert [name for name, _ in mix.named_parameters()] == ["layer_logits"]


def test_mix_rejects_a_width_that_is_not_a_multiple_of_the_layer_count():
    with pytest.raises(ValueError, match="not a multiple of 3"):
        LayerMix(3, 10)


def batch_with_context(dim: int, seed: int = 0) -> Batch:
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([5, 3, 4, 2, 6, 1])
    mask = torch.arange(6)[None, :] < lengths[:, None]
    values = torch.randn(6, 6, dim, generator=generator) * mask[..., None]
    turns = torch.tensor([3, 2, 1, 3, 2, 1])
    turn_mask = torch.arange(3)[None, :] >= (3 - turns)[:, None]  # left padded, current turn last
    turn_values = torch.randn(6, 3, dim, generator=generator) * turn_mask[..., None]
    return Batch(
        modalities={"text": ModalityInput(values, mask, mask.any(dim=1))},
        index=torch.arange(6),
        label=torch.arange(6) % 3,
        context={"text": ModalityInput(turn_values, turn_mask, turn_mask.any(dim=1))},
    )


def context_model(dim: int, **options):
    torch.manual_seed(0)
    return build_model("context", {"text": dim}, 3, "single_label", **{**TINY_CONTEXT, **options})


@pytest.mark.parametrize("window", ["past", "both"])
def test_context_model_mixes_tokens_and_context_turns_before_reading_them(window):
    """With layer_weights, the model on (K x D)-dim input equals the same model without the
    option on the input mixed by hand: tokens and dialogue-context turns are both mixed."""
    mixed_model = context_model(N_LAYERS * LAYER_DIM, layer_weights=True, layers=N_LAYERS, context_window=window).eval()
    with torch.no_grad():
        mixed_model.layer_mix.layer_logits.copy_(torch.tensor([1.0, 0.0, -2.0]))
        mixed_model.layer_mix.scale.fill_(0.8)
    plain = context_model(LAYER_DIM, context_window=window).eval()
    state = {k: v for k, v in mixed_model.state_dict().items() if not k.startswith("layer_mix.")}
    plain.load_state_dict(state)  # strict: every other weight has the one-layer width

    batch = batch_with_context(N_LAYERS * LAYER_DIM)
    if window == "both":
        future_mask = torch.tensor([[True, True], [True, False], [False, False]] * 2)
        future = torch.randn(6, 2, N_LAYERS * LAYER_DIM) * future_mask[..., None]
        batch.context["text_future"] = ModalityInput(future, future_mask, future_mask.any(dim=1))
    by_hand = lambda item: ModalityInput(mixed_model.layer_mix(item.values), item.mask, item.present)  # noqa: E731
    premixed = Batch(
        modalities={"text": by_hand(batch.modalities["text"])},
        index=batch.index,
        label=batch.label,
        context={k: by_hand(v) for k, v in batch.context.items()},
    )
    with torch.no_grad():
        torch.testing.assert_close(mixed_model(batch).logits, plain(premixed).logits)


def test_context_model_learns_the_layer_weights():
    model = context_model(N_LAYERS * LAYER_DIM, layer_weights=True, layers=N_LAYERS).train()
    batch = batch_with_context(N_LAYERS * LAYER_DIM, seed=1)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        optimiser.zero_grad()
        loss = model(batch).loss
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert sum(losses[-3:]) < 0.7 * sum(losses[:3]), losses
    weights = model.layer_mix.weights().detach()
    assert not torch.allclose(weights, torch.full((N_LAYERS,), 1 / N_LAYERS))  # moved off the uniform start
    torch.testing.assert_close(weights.sum(), torch.tensor(1.0))


def test_layer_weights_need_a_layer_count():
    with pytest.raises(ValueError, match="layer_weights needs `layers`"):
        context_model(N_LAYERS * LAYER_DIM, layer_weights=True)
    with pytest.raises(ValueError, match="not a multiple"):
        context_model(10, layer_weights=True, layers=3)


def feature_set(**attrs):
    return SimpleNamespace(name="text.x", attrs=attrs)


def test_layer_count_comes_from_the_feature_set_attrs_of_a_concat_extraction():
    assert concatenated_layers({"layers": [1, 2, 3, 4, 5, 6], "layer_pooling": "concat"}) == 6
    assert concatenated_layers({"layers": [1, 2], "layer_pooling": "mean"}) is None  # averaged: one layer's width
    assert concatenated_layers({"layers": [-1], "layer_pooling": "concat"}) is None
    assert concatenated_layers({}) is None

    sets = {"text": feature_set(layers=[1, 2, 3], layer_pooling="concat")}
    assert with_layer_count({"layer_weights": True, "dropout": 0.5}, sets) == {"layer_weights": True, "dropout": 0.5, "layers": 3}
    assert with_layer_count({"layer_weights": True, "layers": 2}, sets)["layers"] == 2  # an explicit count wins
    assert with_layer_count({"dropout": 0.5}, sets) == {"dropout": 0.5}  # option off: untouched
    with pytest.raises(ValueError, match="does not record several concatenated layers"):
        with_layer_count({"layer_weights": True}, {"text": feature_set(layers=[-1], layer_pooling="concat")})
