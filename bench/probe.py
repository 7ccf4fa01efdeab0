"""What the benchmark scripts that measure in fresh child processes share (bench/streaming_probe.py's
variants, bench/train.py's memory runs): the child is the script itself, run with --child, and
prints one JSON line."""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def probe_parser(doc: str, default_out: Path, variants: tuple[str, ...]) -> argparse.ArgumentParser:
    """--out, --repeats, --variants, and the child's hidden --child/--variant/--cache."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--out", default=str(default_out))
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--variants", default=",".join(variants))
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    parser.add_argument("--cache", help=argparse.SUPPRESS)
    return parser


def chosen_variants(text: str, known: tuple[str, ...]) -> list[str]:
    variants = text.split(",")
    unknown = sorted(set(variants) - set(known))
    if unknown:
        raise SystemExit(f"unknown variant {unknown[0]!r} (use {', '.join(known)})")
    return variants


def run_json_child(arguments: list[str], what: str, extra_env: dict | None = None) -> dict:
    """`python *arguments` in a fresh process from the repository root; its last stdout line, parsed."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), **(extra_env or {})}
    done = subprocess.run([sys.executable, *arguments], capture_output=True, text=True, cwd=ROOT, env=env)
    if done.returncode != 0:
        raise SystemExit(f"{what} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_child(script: str, variant: str, cache: Path, *extra: str) -> dict:
    """One probe variant in a fresh process of `script`."""
    return run_json_child([script, "--child", "--variant", variant, "--cache", str(cache), *extra], f"{variant} run")


def write_report(script: str, out: str | Path, commit: str, started: float, fields: dict) -> dict:
    """The probe's JSON: what ran (script, command, commit, machine), `fields`, and its wall time."""
    import time

    from benchmarks.common import machine

    name = f"bench/{Path(script).name}"
    report = {
        "benchmark": name,
        "command": f"python {name} " + " ".join(sys.argv[1:]),
        "commit": commit,
        "machine": {**machine(), "load_average_at_end": os.getloadavg()},
        **fields,
        "wall_s": round(time.perf_counter() - started, 1),
    }
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(report, indent=2) + "\n")
    return report
