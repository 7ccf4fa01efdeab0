"""Loading a bench/ script as a module, for the tests of the benchmarks themselves."""
from __future__ import annotations

import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def load_bench_script(name: str):
    """bench/<name>.py as a fresh module (bench/ is scripts, not a package the tests import)."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", REPO / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
