"""Generate BENCHMARKS.md from the committed result files.

    python bench/report.py            # writes BENCHMARKS.md at the repository root

Every figure in BENCHMARKS.md comes from a JSON file under bench/results/ or
benchmarks/*/results.json, each written by a committed script whose command is printed
beside its table. Nothing here measures anything.

Each result records the commit it was measured at. A result is **stale** when the code it
measures (`MEASURES`, plus the script that wrote it) differs between that commit and HEAD
(docs excluded); stale results are marked in their section and in the status table at the
top, so a figure is never quoted for code it did not measure.
"""
from __future__ import annotations

import fnmatch
import json
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"

STAGE_1 = ["extract", "rules", "Snakefile", "config", "cache_schema"]
STAGE_2 = ["fuse", "cache_schema"]
# What each result measures: the paths whose change makes it stale (its script is added).
MEASURES = {
    "bench/results/cache_io.json": ["cache_schema"],
    "bench/results/crc_groups.json": ["cache_schema", "bench/cache_io.py", "bench/probe.py"],
    "bench/results/standardise_passes.json": ["fuse/data/normalisation.py", "cache_schema/ragged.py", "bench/probe.py"],
    "bench/results/train.json": STAGE_2 + ["bench/probe.py"],
    # the probe times bench/train.py's epochs and runs its variants through bench/probe.py
    "bench/results/streaming_probe.json": STAGE_2 + ["bench/train.py", "bench/probe.py"],
    # it runs the extraction once and counts re-extracting before each experiment
    "bench/results/reuse.json": STAGE_1 + STAGE_2,
    "bench/results/remote.json": STAGE_2,
    "bench/results/extract.json": STAGE_1,
    "bench/results/gpu.json": STAGE_1 + STAGE_2,
    "bench/results/faces.json": ["extract/encoders", "extract/media"],
    "bench/results/attention_memory.json": ["fuse/models"],
    "bench/results/stage2_equivalence.json": STAGE_2,
    "bench/results/loader_equivalence.json": STAGE_2,
    "bench/results/demo.json": STAGE_1 + STAGE_2 + ["extract/demo", "Makefile", "setup.cfg"],
    "bench/results/demo_size.json": STAGE_1 + STAGE_2,
    "bench/results/robustness_demo.json": STAGE_1 + STAGE_2,
    "bench/results/tune_demo.json": STAGE_1 + STAGE_2,
}
REAL_DATA_MEASURES = STAGE_1 + STAGE_2  # benchmarks/<data set>/results.json, plus its folder


# A docs-only change does not make a result stale, nor does writing the results themselves.
# fnmatch patterns ("*" crosses "/"), used as git pathspecs too, where plain wildcards do the same.
NOT_CODE_PATTERNS = ("*.md", "*/results.json", "bench/results/*")
NOT_CODE = tuple(f":(exclude){pattern}" for pattern in NOT_CODE_PATTERNS)


def code_files(files: list[str]) -> list[str]:
    """The paths of `files` that are code (docs and written results are not: NOT_CODE_PATTERNS)."""
    return [f for f in files if not any(fnmatch.fnmatchcase(f, pattern) for pattern in NOT_CODE_PATTERNS)]


def _git(*args: str, root: Path = ROOT) -> str | None:
    try:
        done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=False)
    except OSError:
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def _commit_field(result: dict) -> str:
    """The commit as the result file wrote it (top level, or in its machine record)."""
    return str(result.get("commit") or (result.get("machine") or {}).get("commit") or "")


def recorded_commit(result: dict) -> str | None:
    """The commit a result file says it measured: "HASH (with uncommitted changes)" (see
    bench/provenance.py) and the older "HASH+uncommitted" and "HASH-dirty" give HASH."""
    return re.split(r"[\s+]|-dirty", _commit_field(result))[0] or None


def _dirty_note(result: dict) -> str:
    field = _commit_field(result)
    return " plus uncommitted changes (the file does not say which)" if "uncommitted" in field or field.endswith("-dirty") else ""


def measured_paths(path: Path, result: dict, root: Path = ROOT) -> list[str]:
    relative = str(path.relative_to(root))
    paths = list(MEASURES.get(relative, REAL_DATA_MEASURES if relative.startswith("benchmarks/") else STAGE_1 + STAGE_2))
    if relative.startswith("benchmarks/"):
        paths.append(str(path.parent.relative_to(root)))
    script = re.search(r"(?:^|\s)((?:bench|benchmarks)/[\w/]+\.py)", str(result.get("command", "")))
    if script:
        paths.append(script.group(1))
    return [p for p in paths if (root / p).exists()]


def freshness(path: Path, result: dict, root: Path = ROOT) -> tuple[bool, str]:
    """(current?, one line saying why) for a result file.

    An equivalence record ({"before": {"commit"}, "after": {"commit"}, "identical"}) proves that
    one change left the numbers unchanged: it is about those two commits, and re-running it
    at a later commit would measure a different change, so it never goes stale.
    """
    before, after = (result.get(k) for k in ("before", "after"))
    if isinstance(before, dict) and isinstance(after, dict) and before.get("commit") and after.get("commit") and "identical" in result:
        outcome = "identical numbers" if result["identical"] else "numbers differ"
        return True, f"record of one change: {str(before['commit'])[:10]} -> {str(after['commit'])[:10]}, {outcome}"
    commit = recorded_commit(result)
    if commit is None:
        return False, "**stale**: records no commit"
    full = _git("rev-parse", "--verify", "--quiet", f"{commit}^{{commit}}", root=root)
    if full is None:
        return False, f"**stale**: measured at {commit[:10]}, a commit this repository does not have"
    paths = measured_paths(path, result, root)
    # Judged by content: a change undone later (or a docs-only commit) leaves a result current.
    changed = _git("diff", "--name-only", full, "HEAD", "--", *paths, *NOT_CODE, root=root) if paths else None
    if changed:
        last = _git("log", "-1", "--format=%H", "--", *paths, *NOT_CODE, root=root) or ""
        shown = ", ".join(changed.splitlines()[:3])
        return False, f"**stale**: measured at {commit[:10]}; the code it measures differs at HEAD (last touched in {last[:10]}: {shown})"
    return True, f"current: measured at {commit[:10]}{_dirty_note(result)}"


def _status_table(entries: list[tuple[Path, dict]]) -> str:
    lines = ["| result | status |", "| --- | --- |"]
    for path, result in entries:
        lines.append(f"| `{path.relative_to(ROOT)}` | {freshness(path, result)[1]} |")
    return "\n".join(lines)


def _with_status(section: str, path: Path, result: dict) -> str:
    """The section with its freshness line under its heading."""
    heading, _, body = section.partition("\n\n")
    return f"{heading}\n\n{freshness(path, result)[1]}\n\n{body}"


def _load(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _table(rows: list[tuple[str, str]], header=("measure", "value")) -> str:
    lines = [f"| {header[0]} | {header[1]} |", "| --- | --- |"]
    lines += [f"| {a} | {b} |" for a, b in rows]
    return "\n".join(lines)


def cache_section(r: dict) -> str:
    s = r["setup"]
    rows = [
        ("payload", f"{s['utterances']:,} utterances, T {s['length_range'][0]}..{s['length_range'][1]}, D {s['dim']}, fp16 = {s['payload_mb']:,} MB"),
        ("write, parts (stage-1 jobs)", f"{r['write']['parts_mb_per_s']} MB/s"),
        ("write, merge into the cache", f"{r['write']['merge_mb_per_s']} MB/s"),
        ("write, end to end", f"{r['write']['end_to_end_mb_per_s']} MB/s"),
        ("open + validate", f"{r['open_and_validate_s']} s"),
        ("random single-utterance reads", f"{r['random_single_reads_per_s']}/s ({r['random_single_read_mb_per_s']} MB/s)"),
        ("random 64-utterance batch reads", f"{r['random_batch64_reads_per_s']}/s ({r['random_batch64_mb_per_s']} MB/s)"),
        ("sequential block scan", f"{r['block_scan_mb_per_s']} MB/s"),
        ("**batch MB/s / scan MB/s** (target ≥ 0.5)", f"**{r['batch_vs_scan_ratio']}**"),
        ("dask sum, shard chunks vs 128-row chunks", f"{r['dask_shard_vs_128row_speedup']}x faster"),
        ("bytes on disk / payload", f"{r['disk_over_payload']}"),
        ("files on disk (target ≤ 1 per 32 MB)", f"{r['files_on_disk']} ({r['payload_mb_per_file']} MB per file)"),
    ]
    return f"### Cache I/O\n\n`{r['command']}` → `bench/results/cache_io.json`\n\n" + _table(rows)


def demo_section(r: dict) -> str:
    first, second = r["first_run"], r["second_run"]
    rows = [
        ("commit", r["commit"]),
        ("machine", f"{r['machine']['cores']} cores, {r['machine']['platform']}"),
        ("first `make demo` (fresh clone: venv, installs, corpus, extraction, training)", f"**{first['wall_seconds']} s** (target ≤ 600 s)"),
        ("of which `snakemake extract` (Snakemake's elapsed time)", f"{first['snakemake_elapsed_seconds']} s"),
        ("second `make demo`", f"{second['wall_seconds']} s; extraction skipped: {second['extraction_skipped']}; new run folder {second['run_folder']}"),
    ]
    parts = [f"### The demo (`make demo`)\n\n`{r['command']}` → `bench/results/demo.json`\n\n" + _table(rows)]
    parts.append("\nWhat the first run printed:\n\n```\n" + first["metrics_table"] + "\n```")
    for key, title in (("ablation", "Fused vs each modality alone (`auto` = per-speaker normalisation)"), ("ablation_global_normalisation", "The same with global normalisation")):
        if key in r:
            parts.append(f"\n{title}: `{r[key]['command']}`\n\n" + r[key]["table"])
    return "\n".join(parts)


def demo_size_section(r: dict) -> str:
    lines = [
        f"### Demo size: does fusion show?\n\n`{r['command']}` → `bench/results/demo_size.json` ({r['protocol']})\n",
        "| dialogues | train/dev/test utterances | fused wF1 (mean) | text / audio / video alone | fusion beats all, mean | seeds where fusion beats all |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for n, x in r["results"].items():
        u, m = x["utterances"], x["test_weighted_f1_mean"]
        lines.append(
            f"| {n} | {u['train']}/{u['dev']}/{u['test']} | {m['fused']:.4f} | {m['text']:.4f} / {m['audio']:.4f} / {m['video']:.4f} | "
            f"{x['fusion_beats_every_modality_in_the_mean']} | {x['seeds_where_fusion_beats_every_modality']} |"
        )
    return "\n".join(lines)


def generic_section(title: str, path: str, r: dict) -> str:
    flat: list[tuple[str, str]] = []

    def walk(prefix: str, value) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                if k in ("machine", "command"):
                    continue
                walk(f"{prefix}{k}." if prefix or k else k, v)
        else:
            flat.append((prefix.rstrip("."), json.dumps(value) if isinstance(value, (list, bool)) else str(value)))

    walk("", r)
    cmd = r.get("command", f"see {path}")
    return f"### {title}\n\n`{cmd}` → `{path}`\n\n" + _table(flat)


def main() -> None:
    parts = [
        "# Benchmarks",
        "",
        "Generated by `python bench/report.py` from the result files; do not edit by hand.",
        "Absolute times depend on the machine (each result file records it); compare ratios",
        "measured within one run.",
        "",
        "## Real data",
        "",
    ]
    real = sorted((ROOT / "benchmarks").glob("*/results.json"))
    every = [(p, _load(p)) for p in [*real, *sorted(RESULTS.glob("*.json"))]]
    parts[5:5] = ["", "Freshness of every result file (see `bench/report.py`). Each file records the commit it "
                  "measured (`bench/provenance.py`); \"plus uncommitted changes\" means code, not results or docs, "
                  "differed from that commit when it ran.", "", _status_table(every)]
    if not real:
        parts.append("No real-data results yet (run the scripts in `benchmarks/`).")
    for path in real:
        parts += [_with_status(generic_section(path.parent.name, str(path.relative_to(ROOT)), _load(path)), path, _load(path)), ""]
    demo = _load(RESULTS / "demo.json")
    parts += ["## The demo", "", _with_status(demo_section(demo), RESULTS / "demo.json", demo) if demo else "Not run yet (`python bench/demo.py`).", ""]
    size = _load(RESULTS / "demo_size.json")
    if size:
        parts += [_with_status(demo_size_section(size), RESULTS / "demo_size.json", size), ""]
    tune = _load(RESULTS / "tune_demo.json")
    if tune:
        parts += [_with_status(generic_section("fuse tune on the demo", "bench/results/tune_demo.json", tune), RESULTS / "tune_demo.json", tune), ""]
    parts += ["## Performance", ""]
    cache = _load(RESULTS / "cache_io.json")
    try:
        cache_text = cache_section(cache) if cache else None
    except KeyError:  # a newer cache_io.json layout: shown field by field
        cache_text = generic_section("Cache I/O", "bench/results/cache_io.json", cache)
    parts += [_with_status(cache_text, RESULTS / "cache_io.json", cache) if cache else "Cache I/O: not run yet (`python bench/cache_io.py`).", ""]
    shown = {"cache_io", "demo", "demo_size", "tune_demo"}
    titles = {"extract": "Extraction", "faces": "Face pipeline", "train": "Training from the cache", "reuse": "Experiment reuse",
              "remote": "Training from a cache on object storage (localhost S3)"}
    for path in sorted(RESULTS.glob("*.json"), key=lambda p: (p.stem not in titles, list(titles).index(p.stem) if p.stem in titles else 0, p.stem)):
        if path.stem in shown:
            continue
        r = _load(path)
        title = titles.get(path.stem, path.stem.replace("_", " ").capitalize())
        parts += [_with_status(generic_section(title, f"bench/results/{path.name}", r), path, r), ""]
    (ROOT / "BENCHMARKS.md").write_text("\n".join(parts).rstrip() + "\n")
    print(f"wrote {ROOT / 'BENCHMARKS.md'}")


if __name__ == "__main__":
    main()
