"""Plumbing for diagnostic probes (bench/streaming_probe.py): each variant runs in a fresh child
process of the probe script, which prints one JSON line."""
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


def run_child(script: str, variant: str, cache: Path, *extra: str) -> dict:
    """One variant in a fresh process of `script`; its last stdout line, parsed."""
    command = [sys.executable, script, "--child", "--variant", variant, "--cache", str(cache), *extra]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    if done.returncode != 0:
        raise SystemExit(f"{variant} run failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


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
