"""Reliability of the feature cache (cache_schema): bad caches, interrupted writers, concurrency.

Each test names the fault it injects and the behaviour the contract (cache_schema/LAYOUT.md)
promises. What tests/test_cache_schema.py already proves is referenced, not repeated:

* every corruption `validate` knows (offsets, present, dims, dtypes, provenance, ids, labels,
  column lengths, missing arrays): test_cache_schema.py::test_validate_names_each_corruption
* a newer schema version refused by `open_cache`/`validate`/CLI:
  test_cache_schema.py::test_not_a_cache_and_newer_schema_get_one_line_errors
* two readers keep reading while two writers add feature sets (writers serialise):
  test_cache_schema.py::test_readers_keep_working_while_a_feature_set_is_added
* merges refuse gaps/overlaps/dim mismatches and leave nothing visible:
  test_cache_schema.py::test_merge_refuses_gaps_overlaps_and_dim_mismatch

Writers that must die mid-write run as separate Python processes (a script written into
tmp_path) so that SIGKILL hits a real process holding the real lock. Tests marked
`xfail(strict=True)` document bugs found here (docs/reliability.md has the list); they turn
into failures ("XPASS strict") once fixed, so the marker must then be removed.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

from cache_schema import (
    CacheError,
    CacheValidationError,
    FeaturePartWriter,
    FeatureSetNotFound,
    NotACacheError,
    SchemaVersionError,
    UtteranceTable,
    check_feature_sets,
    create_cache,
    merge_parts,
    open_cache,
    validate,
    write_feature_set,
)

REPO_ROOT = Path(__file__).resolve().parent.parent


# --------------------------------------------------------------------------- helpers


def make_table(n: int) -> UtteranceTable:
    return UtteranceTable.from_records([{"id": f"u{i}", "split": "train", "text": f"t{i}"} for i in range(n)])


def version_arrays(n: int, version: int, dim: int = 4) -> list[np.ndarray]:
    """Utterance i of `version` has a version-specific length and the constant value 100*version+i."""
    return [np.full(((i * 7 + version * 3) % 11 + 1, dim), 100 * version + i, dtype=np.float32) for i in range(n)]


def version_of(values: np.ndarray, lengths: np.ndarray) -> int | str:
    """Which single version a padded batch of all utterances came from, or a description of the mix."""
    versions = set()
    for i, length in enumerate(lengths.tolist()):
        rows = values[i, :length]
        if length == 0 or not (rows == rows[0, 0]).all():
            return f"utterance {i}: rows are not one constant"
        version = int(round(float(rows[0, 0]) - i)) // 100
        if (i * 7 + version * 3) % 11 + 1 != length:
            return f"utterance {i}: {length} rows but version {version} has {(i * 7 + version * 3) % 11 + 1}"
        versions.add(version)
    return versions.pop() if len(versions) == 1 else f"mixed versions {sorted(versions)}"


def small_cache(tmp_path: Path, n: int = 12, name: str = "audio.v") -> Path:
    path = tmp_path / "feats.zarr"
    create_cache(path, make_table(n))
    write_feature_set(path, name, version_arrays(n, 0), {"modality": "audio"}, dtype="float32")
    return path


def set_schema_version(path: Path, version) -> None:
    meta = json.loads((path / "zarr.json").read_text())
    meta["attributes"]["emofuse_cache"]["schema_version"] = version
    (path / "zarr.json").write_text(json.dumps(meta))


def write_parts(folder: Path, n: int, dim: int, n_parts: int, value_offset: float) -> list[Path]:
    """Parts covering n utterances of 10 rows each, utterance i holding i + value_offset."""
    parts = []
    bounds = np.linspace(0, n, n_parts + 1).astype(int)
    for k, (start, stop) in enumerate(zip(bounds[:-1], bounds[1:])):
        writer = FeaturePartWriter(folder / f"part{k}.zarr", int(start), int(stop), dim, "float32")
        for row in range(start, stop):
            writer.put(row, np.full((10, dim), row + value_offset, dtype=np.float32))
        parts.append(writer.close())
    return parts


def python_script(tmp_path: Path, name: str, code: str) -> Path:
    script = tmp_path / f"{name}.py"
    script.write_text(textwrap.dedent(code))
    return script


def start_script(script: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.Popen(
        [sys.executable, str(script), *map(str, args)], cwd=REPO_ROOT, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def finish(proc: subprocess.Popen, timeout: float = 120) -> str:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, f"child failed ({proc.returncode}):\n{err[-3000:]}"
    return out


# --------------------------------------------------------------------------- versions, missing sets


@pytest.mark.parametrize(
    "version, error, message",
    [
        (2, SchemaVersionError, "schema version 2 is not supported"),
        (999, SchemaVersionError, "upgrade emofuse"),
        (0, SchemaVersionError, "predates this emofuse"),
        ("1", NotACacheError, "schema_version '1' is not an integer"),
        (1.0, NotACacheError, "is not an integer"),
        (None, NotACacheError, "is not an integer"),
    ],
)
def test_unknown_schema_versions_are_refused_when_opening_and_refreshing(tmp_path, version, error, message):
    path = small_cache(tmp_path)
    opened = open_cache(path)  # opened while still version 1
    set_schema_version(path, version)
    with pytest.raises(error, match=message):
        open_cache(path)
    with pytest.raises(error, match=message):
        opened.refresh()  # a long-lived reader notices on refresh


@pytest.mark.parametrize("writer", ["write_feature_set", "create_cache"])
def test_writers_refuse_a_cache_of_a_newer_schema_version(tmp_path, writer):
    path = small_cache(tmp_path)
    set_schema_version(path, 2)
    before = (path / "zarr.json").read_text()
    with pytest.raises(SchemaVersionError, match="schema version 2"):
        if writer == "write_feature_set":
            write_feature_set(path, "text.new", version_arrays(12, 1), {"modality": "text"})
        else:
            create_cache(path, make_table(13))  # one utterance more: would append a row
    assert (path / "zarr.json").read_text() == before


def test_requested_feature_sets_missing_are_named_with_what_is_available(tmp_path):
    path = small_cache(tmp_path)
    cache = open_cache(path)
    with pytest.raises(CacheError, match=r"'text.bert', 'video.vit' not in cache \(available: audio.v\)"):
        check_feature_sets(cache, ["audio.v", "text.bert", "video.vit"])
    with pytest.raises(FeatureSetNotFound) as caught:
        cache["text.bert"]
    assert isinstance(caught.value, KeyError) and "available: audio.v" in str(caught.value)
    # the training data layer turns it into its own one-line error
    from fuse.data import DataError, select_feature_sets

    with pytest.raises(DataError, match=r"no feature set 'text.bert' for --text \(available: audio: audio.v\)"):
        select_feature_sets(cache, {"text": "text.bert"})


def test_half_written_and_hidden_entries_are_never_feature_sets(tmp_path):
    path = small_cache(tmp_path)
    # a complete-looking group still in staging, a hidden one, a folder without zarr.json
    # (an interrupted copy), and a leftover in the trash
    for folder in (path / ".staging" / "text.half-1234abcd", path / "features" / ".text.tmp", path / ".trash" / "audio.v-1"):
        group = zarr.open_group(str(folder), mode="w")
        group.create_array("values", shape=(3, 4), dtype="float32")
        group.attrs["modality"] = "text"
    (path / "features" / "text.copying" / "values").mkdir(parents=True)
    cache = validate(path)
    assert cache.feature_names() == ["audio.v"]
    for name in ("text.half-1234abcd", ".text.tmp", "text.copying"):
        assert name not in cache
        with pytest.raises(FeatureSetNotFound):
            cache[name]


# --------------------------------------------------------------------------- missing or damaged files


def _shard_files(path: Path, name: str = "audio.v") -> list[Path]:
    return sorted(p for p in (path / "features" / name / "values").rglob("*") if p.is_file() and p.name != "zarr.json")


@pytest.mark.parametrize("damage", ["deleted", "emptied"])
def test_missing_values_shard_is_reported_not_read_as_zeros(tmp_path, damage):
    path = small_cache(tmp_path)
    (shard,) = _shard_files(path)
    if damage == "deleted":
        shard.unlink()
    else:
        shard.write_bytes(b"")
    with pytest.raises(CacheValidationError, match="values"):
        validate(path, deep=True)


def test_flipped_bit_in_values_is_detected(tmp_path):
    path = small_cache(tmp_path)
    (shard,) = _shard_files(path)
    data = bytearray(shard.read_bytes())
    data[4 * 4 * 3 + 1] ^= 0x40  # row 3 (utterance 1), second byte of its first value
    shard.write_bytes(bytes(data))
    with pytest.raises((CacheError, ValueError)):
        validate(path, deep=True)
        values, lengths = open_cache(path)["audio.v"].batch(np.arange(12))
        assert version_of(values, lengths) == 0


@pytest.mark.parametrize("damage", ["truncated shard", "utterances zarr.json empty"])
def test_validate_reports_unreadable_files_as_problems(tmp_path, damage):
    path = small_cache(tmp_path)
    if damage == "truncated shard":
        (shard,) = _shard_files(path)
        shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    else:
        (path / "utterances" / "zarr.json").write_text("")
    with pytest.raises(CacheValidationError) as caught:
        validate(path, deep=True)
    assert caught.value.problems


@pytest.mark.parametrize("damage", ["feature-set zarr.json", "values zarr.json", "truncated shard"])
def test_reader_errors_on_damaged_files_are_cache_errors_naming_the_set(tmp_path, damage):
    path = small_cache(tmp_path)
    if damage == "feature-set zarr.json":
        (path / "features/audio.v/zarr.json").write_text("{not json")
    elif damage == "values zarr.json":
        (path / "features/audio.v/values/zarr.json").write_text("{not json")
    else:
        (shard,) = _shard_files(path)
        shard.write_bytes(shard.read_bytes()[:100])
    with pytest.raises(CacheError, match="audio.v"):
        open_cache(path)["audio.v"].batch(np.arange(12))


@pytest.mark.filterwarnings("ignore:overflow encountered in cast")
def test_values_that_overflow_float16_are_refused_at_write_time(tmp_path):
    writer = FeaturePartWriter(tmp_path / "part", 0, 2, dim=4, dtype="float16")
    with pytest.raises(CacheError, match="row 1"):
        writer.put(1, np.full((3, 4), 7.0e4, dtype=np.float32))  # finite in float32, inf in float16


# --------------------------------------------------------------------------- interrupted writers

MERGE_SCRIPT = """
    import os, signal, sys
    from pathlib import Path
    import cache_schema.writer as writer

    cache, name, parts_dir, fault = sys.argv[1], sys.argv[2], Path(sys.argv[3]), sys.argv[4]
    parts = sorted(parts_dir.glob("part*.zarr"))
    if fault == "after-first-rename":      # no RENAME_EXCHANGE: die between the two renames
        writer._exchange = lambda a, b: False
        real_rename = os.rename
        def rename(src, dst):
            real_rename(src, dst)
            if "/.trash/" in str(dst):
                os.kill(os.getpid(), signal.SIGKILL)
        os.rename = rename
    elif fault == "before-swap":           # die with the staging group complete
        writer._swap_in = lambda *args: os.kill(os.getpid(), signal.SIGKILL)
    print("merging", flush=True)
    writer.merge_parts(cache, name, parts, {"modality": "audio"})
    print("merged", flush=True)
"""

N_BIG, DIM_BIG = 2000, 256  # 2000 x 10 rows x 256 float32 = 20 MB: a merge takes a few tenths of a second


@pytest.fixture
def big_cache(tmp_path):
    """A cache whose set audio.big holds version "old" (value = row) and parts for version "new" (row + 0.5)."""
    path = tmp_path / "feats.zarr"
    create_cache(path, make_table(N_BIG))
    old_parts = write_parts(tmp_path / "old_parts", N_BIG, DIM_BIG, 4, 0.0)
    started = time.perf_counter()
    merge_parts(path, "audio.big", old_parts, {"modality": "audio"})
    merge_seconds = time.perf_counter() - started
    write_parts(tmp_path / "new_parts", N_BIG, DIM_BIG, 4, 0.5)
    return path, tmp_path / "new_parts", merge_seconds


def state_of(path: Path) -> str:
    """'old', 'new', 'missing', or a description of the damage, for audio.big."""
    cache = open_cache(path)
    if "audio.big" not in cache:
        return "missing"
    fs = cache["audio.big"]
    first_value = np.asarray(fs.values[:, 0], dtype=np.float32)  # one column of every row
    expected_rows = np.repeat(np.arange(N_BIG, dtype=np.float32), 10)
    for label, offset in (("old", 0.0), ("new", 0.5)):
        if np.array_equal(first_value, expected_rows + offset) and np.array_equal(fs.lengths, np.full(N_BIG, 10)):
            return label
    return "damaged"


@pytest.mark.slow
def test_sigkill_during_merge_keeps_the_old_set_and_a_rerun_succeeds(big_cache):
    path, new_parts, merge_seconds = big_cache
    script = python_script(path.parent, "merge_child", MERGE_SCRIPT)
    outcomes = []
    for fraction in (0.02, 0.2, 0.45, 0.7, 1.0):
        child = start_script(script, path, "audio.big", new_parts, "none")
        assert child.stdout.readline().strip() == "merging"
        time.sleep(fraction * merge_seconds)
        child.kill()  # SIGKILL: no cleanup handlers run
        child.communicate(timeout=60)
        state = state_of(path)
        outcomes.append((fraction, state))
        assert state in ("old", "new"), f"after SIGKILL at {fraction:.0%} of a merge the set is {state}: {outcomes}"
        validate(path)  # nothing half-written is visible; the lock was released by the kernel
        if state == "new":
            merge_parts(path, "audio.big", sorted((path.parent / "old_parts").glob("part*.zarr")), {"modality": "audio"})
    assert any(state == "old" for _, state in outcomes), f"no kill landed inside a merge: {outcomes}"
    merge_parts(path, "audio.big", sorted(new_parts.glob("part*.zarr")), {"modality": "audio"})  # the rerun
    assert state_of(path) == "new"
    validate(path, deep=True)


def test_kill_between_the_two_renames_of_a_replacement_keeps_a_set(big_cache):
    """Where the file system cannot exchange atomically, the swap takes two renames; a writer
    killed between them leaves the old set in .trash/, and the next writer puts it back."""
    path, new_parts, _ = big_cache
    script = python_script(path.parent, "merge_child", MERGE_SCRIPT)
    child = start_script(script, path, "audio.big", new_parts, "after-first-rename")
    child.communicate(timeout=120)
    assert child.returncode == -9
    create_cache(path, make_table(N_BIG))  # any later write takes the lock and repairs
    assert state_of(path) == "old"
    assert not (path / ".trash").exists() or list((path / ".trash").iterdir()) == []


def test_replacement_is_a_single_atomic_exchange(big_cache):
    """With RENAME_EXCHANGE (Linux) nothing ever passes through .trash/: no window without a set."""
    path, new_parts, _ = big_cache
    import cache_schema.writer as writer

    seen = []
    real_rename = os.rename
    try:
        os.rename = lambda src, dst: (seen.append(str(dst)), real_rename(src, dst))[1]
        merge_parts(path, "audio.big", sorted(new_parts.glob("part*.zarr")), {"modality": "audio"})
    finally:
        os.rename = real_rename
    assert writer._exchange  # the platform supports it here
    assert not any("/.trash/" in d for d in seen), seen
    assert state_of(path) == "new"


TABLE_SCRIPT = """
    import os, signal, sys
    import cache_schema.writer as writer
    from cache_schema import UtteranceTable, create_cache

    writer._exchange = lambda a, b: False  # a file system without RENAME_EXCHANGE
    real_rename = os.rename
    def rename(src, dst):
        real_rename(src, dst)
        if "/.trash/" in str(dst):  # the old utterances/ group has just been moved aside
            os.kill(os.getpid(), signal.SIGKILL)
    os.rename = rename
    n = int(sys.argv[2])
    create_cache(sys.argv[1], UtteranceTable.from_records([{"id": f"u{i}", "split": "train", "text": f"t{i}"} for i in range(n)]))
"""


def test_kill_while_adding_utterances_keeps_a_readable_table(tmp_path):
    path = small_cache(tmp_path)
    script = python_script(tmp_path, "table_child", TABLE_SCRIPT)
    child = start_script(script, path, 14)  # two utterances more: the table is rewritten
    child.communicate(timeout=120)
    assert child.returncode == -9
    create_cache(path, make_table(12))  # the next writer restores the table from .trash/
    assert len(open_cache(path).table) == 12


def test_a_rerun_after_a_killed_merge_leaves_no_staging_leftovers(big_cache):
    path, new_parts, _ = big_cache
    script = python_script(path.parent, "merge_child", MERGE_SCRIPT)
    child = start_script(script, path, "audio.big", new_parts, "before-swap")
    child.communicate(timeout=120)
    assert child.returncode == -9 and state_of(path) == "old"
    merge_parts(path, "audio.big", sorted(new_parts.glob("part*.zarr")), {"modality": "audio"})
    assert state_of(path) == "new"
    assert list((path / ".staging").iterdir()) == []


# --------------------------------------------------------------------------- readers during replacement


def test_a_handle_opened_before_a_replacement_never_mixes_versions(tmp_path):
    path = small_cache(tmp_path)
    handle = open_cache(path)["audio.v"]  # e.g. fuse.data.FeatureData holds its sets for a whole run
    values, lengths = handle.batch(np.arange(12))
    assert version_of(values, lengths) == 0
    write_feature_set(path, "audio.v", version_arrays(12, 1), {"modality": "audio"}, dtype="float32")
    try:
        values, lengths = handle.batch(np.arange(12))
    except CacheError:
        return  # a clear "set was replaced, reopen it" error is acceptable
    assert version_of(values, lengths) in (0, 1)


READER_SCRIPT = """
    import json, sys
    from pathlib import Path
    import numpy as np
    from cache_schema import open_cache

    path, name, stop_file, n = sys.argv[1], sys.argv[2], Path(sys.argv[3]), int(sys.argv[4])
    expected = [np.full(((i * 7) % 11 + 1, 4), i, dtype=np.float32) for i in range(n)]
    cache = open_cache(path)
    reads, problems = 0, []
    print("reading", flush=True)
    while not stop_file.exists() or reads < 20:  # until the writers are done
        try:
            cache.refresh()
            values, lengths = cache[name].batch(np.arange(n)[::-1] if reads % 2 else np.arange(n))
            order = np.arange(n)[::-1] if reads % 2 else np.arange(n)
            for k, i in enumerate(order):
                if not np.array_equal(values[k, : lengths[k]], expected[i]):
                    problems.append(f"read {reads}: utterance {i} differs")
                    break
        except Exception as error:
            problems.append(f"read {reads}: {type(error).__name__}: {error}")
        reads += 1
    print(json.dumps({"reads": reads, "problems": problems[:5], "n_problems": len(problems)}), flush=True)
"""

WRITER_SCRIPT = """
    import sys
    import numpy as np
    from cache_schema import write_feature_set

    path, name, version, rounds, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
    for _ in range(rounds):
        arrays = [np.full(((i * 7 + version * 3) % 11 + 1, 4), 100 * version + i, dtype=np.float32) for i in range(n)]
        write_feature_set(path, name, arrays, {"modality": "audio"}, dtype="float32")
    print("done", flush=True)
"""


@pytest.mark.slow
def test_readers_of_one_set_are_unaffected_while_two_writers_replace_another(tmp_path):
    n = 24
    path = small_cache(tmp_path, n=n, name="text.stable")  # version 0: utterance i = (len (7i % 11) + 1, value i)
    write_feature_set(path, "audio.churn", version_arrays(n, 1), {"modality": "audio"}, dtype="float32")
    reader = python_script(tmp_path, "reader", READER_SCRIPT)
    writer = python_script(tmp_path, "writer", WRITER_SCRIPT)
    stop_file = tmp_path / "writers-done"
    readers = [start_script(reader, path, "text.stable", stop_file, n) for _ in range(2)]
    for proc in readers:
        assert proc.stdout.readline().strip() == "reading"
    writers = [start_script(writer, path, "audio.churn", version, 8, n) for version in (2, 3)]
    for proc in writers:
        assert finish(proc).strip() == "done"
    stop_file.touch()
    for proc in readers:
        result = json.loads(finish(proc).strip().splitlines()[-1])
        assert result["reads"] >= 20 and result["n_problems"] == 0, result
    # the two writers serialised: the replaced set is exactly one writer's last version, and valid
    cache = validate(path, deep=True)
    values, lengths = cache["audio.churn"].batch(np.arange(n))
    assert version_of(values, lengths) in (2, 3)
    assert cache.feature_names() == ["audio.churn", "text.stable"]
