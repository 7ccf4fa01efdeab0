"""fuse.data.allocator: the loader's glibc mmap threshold, set once and never against the user."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

CHECK = "from fuse.data.allocator import keep_large_blocks_on_mmap as k; print(k(), k())"


def run(env_extra: dict) -> str:
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_MMAP_THRESHOLD_"}
    done = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, env={**env, **env_extra}, check=True)
    return done.stdout.strip()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mallopt is glibc's (Linux)")
def test_threshold_fixed_once_on_glibc_and_left_to_the_user_when_set():
    assert run({}) == "True True"
    assert run({"MALLOC_MMAP_THRESHOLD_": "65536"}) == "False False"
