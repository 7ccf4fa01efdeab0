"""Device, determinism and mixed precision: the few settings training and inference share."""
from __future__ import annotations

import os
import random

import numpy as np
import torch


def pick_device(name: str) -> torch.device:
    """`auto`: CUDA when available, else CPU. A CUDA device on a machine without one is refused."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available on this machine")
    return device


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # needed by deterministic cuBLAS
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


class DeterminismFlags:
    """Torch's process-wide determinism flags, saved on entry and restored on exit."""

    def __enter__(self) -> "DeterminismFlags":
        self.saved = (
            torch.are_deterministic_algorithms_enabled(),
            torch.is_deterministic_algorithms_warn_only_enabled(),
            torch.backends.cudnn.benchmark,
        )
        return self

    def __exit__(self, *exc) -> None:
        torch.use_deterministic_algorithms(self.saved[0], warn_only=self.saved[1])
        torch.backends.cudnn.benchmark = self.saved[2]


def autocast_for(device: torch.device, amp: bool):
    """(autocast context factory, GradScaler) for the device; AMP only on CUDA.

    bfloat16 where the GPU supports it (no scaler needed), else float16 with a GradScaler.
    """
    device = torch.device(device)
    if not (amp and device.type == "cuda"):
        return (lambda: torch.autocast(device.type, enabled=False)), torch.amp.GradScaler("cuda", enabled=False)
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
    return (lambda: torch.autocast("cuda", dtype=dtype)), scaler
