"""Shared test fixtures: where the real data lives, and an offline guard."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

# Tests must never reach a model hub: transformers/huggingface_hub honour these.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = Path(os.environ.get("EMOFUSE_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


def _shared(sub: str) -> Path:
    path = SHARED_DATA / sub
    if not path.exists():
        pytest.skip(f"real data not found at {path} (set EMOFUSE_SHARED_DATA to ../shared/data)")
    return path


@pytest.fixture
def meld_dir() -> Path:
    return _shared("meld")


@pytest.fixture
def emodb_dir() -> Path:
    return _shared("emodb")


@pytest.fixture
def mini_mosei_dir() -> Path:
    return _shared("mini_mosei")
