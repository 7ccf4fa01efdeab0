"""The cache contract: round trips, property-based packing, corruption detection, concurrency."""
from __future__ import annotations

import json
import multiprocessing as mp
import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from cache_schema import (
    CacheError,
    CacheValidationError,
    FeaturePartWriter,
    FeatureSetNotFound,
    NotACacheError,
    SchemaVersionError,
    UtteranceTable,
    create_cache,
    delete_feature_set,
    merge_parts,
    open_cache,
    validate,
    write_feature_set,
)
from cache_schema.ragged import pack, pad, rows_for, unpack
from fuse.cli import main as fuse_cli

LABELS = ["neutral", "joy", "anger"]


def make_table(n: int, prefix: str = "u") -> UtteranceTable:
    records = [
        {
            "id": f"{prefix}{i}",
            "split": ["train", "dev", "test"][i % 3],
            "dataset": "toy",
            "dialogue_id": f"d{i // 4}",
            "turn": i % 4,
            "speaker": f"s{i % 2}",
            "text": f"utterance number {i}",
            "label": LABELS[i % 3],
            "audio_path": f"/media/{i}.wav",
        }
        for i in range(n)
    ]
    return UtteranceTable.from_records(records, label_names=LABELS)


def ragged(n: int, dim: int, rng: np.random.Generator, max_len: int = 50, missing_every: int = 0):
    out = []
    for i in range(n):
        if missing_every and i % missing_every == 0:
            out.append(None)
        else:
            out.append(rng.standard_normal((int(rng.integers(1, max_len + 1)), dim)).astype(np.float32))
    return out


@pytest.fixture
def cache_path(tmp_path: Path) -> Path:
    path = tmp_path / "feats.zarr"
    create_cache(path, make_table(12))
    return path


# ---------------------------------------------------------------- round trips


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_ragged_round_trip_lengths_0_to_500(tmp_path, dtype):
    rng = np.random.default_rng(0)
    lengths = [0, 1, 2, 499, 500, 37, 0, 250]
    path = tmp_path / "c.zarr"
    create_cache(path, make_table(len(lengths)))
    arrays = [None if t == 0 else rng.standard_normal((t, 16)).astype(np.float32) for t in lengths]
    write_feature_set(path, "audio.toy", arrays, {"modality": "audio"}, dtype=dtype)
    fs = validate(path)["audio.toy"]
    assert fs.dtype == dtype
    assert fs.lengths.tolist() == lengths
    assert fs.present.tolist() == [t > 0 for t in lengths]
    for i, arr in enumerate(arrays):
        got = fs.get(i)
        expected = np.zeros((0, 16)) if arr is None else arr.astype(dtype)
        np.testing.assert_array_equal(got, expected)
    padded, lens = fs.batch([3, 0, 4])
    assert padded.shape == (3, 500, 16) and lens.tolist() == [499, 0, 500]
    np.testing.assert_array_equal(padded[0, :499], arrays[3].astype(dtype))
    assert not padded[0, 499:].any() and not padded[1].any()


def test_empty_feature_set_every_utterance_missing(cache_path):
    write_feature_set(cache_path, "video.none", [None] * 12, {"modality": "video"}, dim=8)
    fs = validate(cache_path)["video.none"]
    assert fs.values.shape == (0, 8) and not fs.present.any()
    padded, lens = fs.batch(np.arange(12))
    assert padded.shape == (12, 0, 8) and lens.sum() == 0


def test_batch_as_torch_and_truncation(cache_path):
    rng = np.random.default_rng(1)
    arrays = ragged(12, 4, rng, max_len=30)
    write_feature_set(cache_path, "text.t", arrays, {"modality": "text"}, dtype="float32")
    fs = open_cache(cache_path)["text.t"]
    values, lengths = fs.batch([5, 6], max_len=7, as_torch=True)
    assert tuple(values.shape) == (2, 7, 4)
    assert lengths.tolist() == [min(7, len(arrays[5])), min(7, len(arrays[6]))]
    np.testing.assert_array_equal(values[0, : lengths[0]].numpy(), arrays[5][: lengths[0]])


def test_blocks_and_dask_view_cover_all_rows(cache_path):
    rng = np.random.default_rng(2)
    arrays = ragged(12, 4, rng, missing_every=5)
    write_feature_set(cache_path, "audio.a", arrays, {"modality": "audio"}, dtype="float32")
    fs = open_cache(cache_path)["audio.a"]
    blocks = list(fs.iter_blocks(target_rows=40))
    assert blocks[0][0] == 0 and blocks[-1][1] == 12
    assert all(a[1] == b[0] for a, b in zip(blocks, blocks[1:]))
    for start, stop in blocks:
        values, offsets = fs.block(start, stop)
        for k, i in enumerate(range(start, stop)):
            np.testing.assert_array_equal(values[offsets[k] : offsets[k + 1]], fs.get(i))
    dask_values = fs.to_dask()
    np.testing.assert_array_equal(dask_values.compute(), fs.values[...])


def test_table_round_trip_and_metadata(cache_path):
    table = open_cache(cache_path).table
    assert table.label_names == LABELS
    assert table.columns["id"][3] == "u3"
    assert table.columns["label"].tolist()[:3] == [0, 1, 2]
    assert table.metadata_columns == ["audio_path"]
    assert np.isnan(table.columns["start"]).all()
    assert table.columns["labels_multi"].shape == (12, 0)


def test_string_columns_share_one_object_per_value(cache_path):
    cache = open_cache(cache_path)
    speakers, ids = cache.column("speaker"), cache.column("id")
    assert speakers.dtype == object and speakers.tolist() == [f"s{i % 2}" for i in range(12)]
    assert speakers[0] is speakers[2] and speakers[1] is speakers[3]  # one str per value, not per row
    assert ids.tolist() == [f"u{i}" for i in range(12)]
    assert cache.column("turn").dtype.kind == "i"  # numeric columns as stored


def test_multi_label_table():
    records = [{"id": "a", "labels_multi": [0.0, 1.5]}, {"id": "b"}]
    table = UtteranceTable.from_records(records, labels_multi_names=["happy", "sad"])
    assert table.columns["labels_multi"][0].tolist() == [0.0, 1.5]
    assert np.isnan(table.columns["labels_multi"][1]).all()


def test_table_rejects_bad_records():
    with pytest.raises(CacheError, match="duplicate utterance ids: \\['a'\\]"):
        UtteranceTable.from_records([{"id": "a"}, {"id": "a"}])
    with pytest.raises(CacheError, match="'x': label 'love' is not one of"):
        UtteranceTable.from_records([{"id": "x", "label": "love"}], label_names=LABELS)
    with pytest.raises(CacheError, match="non-empty id"):
        UtteranceTable.from_records([{"id": ""}])


# ---------------------------------------------------------------- property-based packing


@settings(max_examples=60, deadline=None)
@given(
    lengths=st.lists(st.integers(min_value=0, max_value=40), min_size=0, max_size=30),
    dim=st.integers(min_value=1, max_value=6),
    picks=st.lists(st.integers(min_value=0, max_value=1000), max_size=12),
)
def test_pack_unpack_rows_pad_properties(lengths, dim, picks):
    rng = np.random.default_rng(len(lengths) * 7 + dim)
    arrays = [None if t == 0 else rng.standard_normal((t, dim)).astype(np.float32) for t in lengths]
    values, offsets, present = pack(arrays, dim, "float32")
    assert offsets[0] == 0 and offsets[-1] == values.shape[0] and (np.diff(offsets) >= 0).all()
    assert present.tolist() == [a is not None for a in arrays]
    for got, arr in zip(unpack(values, offsets), arrays):
        np.testing.assert_array_equal(got, np.zeros((0, dim)) if arr is None else arr)
    if lengths:
        idx = np.array([p % len(lengths) for p in picks], dtype=np.int64)
        rows, lens = rows_for(offsets, idx)
        assert lens.tolist() == [lengths[i] for i in idx]
        expected = [values[offsets[i] : offsets[i + 1]] for i in idx]
        flat = values[rows]
        np.testing.assert_array_equal(flat, np.concatenate(expected) if expected else np.zeros((0, dim)))
        padded = pad(flat, lens)
        for k, e in enumerate(expected):
            np.testing.assert_array_equal(padded[k, : len(e)], e)
            assert not padded[k, len(e) :].any()


@settings(max_examples=15, deadline=None)
@given(lengths=st.lists(st.integers(min_value=0, max_value=60), min_size=1, max_size=20), dtype=st.sampled_from(["float16", "float32"]))
def test_cache_round_trip_property(tmp_path_factory, lengths, dtype):
    path = tmp_path_factory.mktemp("prop") / "c.zarr"
    create_cache(path, make_table(len(lengths)))
    rng = np.random.default_rng(sum(lengths))
    arrays = [None if t == 0 else rng.standard_normal((t, 3)).astype(np.float32) for t in lengths]
    write_feature_set(path, "x.y", arrays, {"modality": "audio"}, dim=3, dtype=dtype)
    fs = validate(path)["x.y"]
    order = rng.permutation(len(lengths))
    padded, lens = fs.batch(order)
    for k, i in enumerate(order):
        expected = np.zeros((0, 3)) if arrays[i] is None else arrays[i].astype(dtype)
        np.testing.assert_array_equal(padded[k, : lens[k]], expected)


# ---------------------------------------------------------------- parts and merge


def test_parts_in_any_order_merge_to_table_order(cache_path, tmp_path):
    rng = np.random.default_rng(3)
    arrays = ragged(12, 5, rng, missing_every=4)
    parts = []
    for k, (start, stop) in enumerate([(0, 5), (5, 9), (9, 12)]):
        writer = FeaturePartWriter(tmp_path / "parts" / f"{k}.zarr", start, stop, dim=5, dtype="float32")
        for row in reversed(range(start, stop)):  # bucketed jobs finish out of order
            if arrays[row] is None:
                writer.fail(row, f"u{row}", f"/media/{row}.wav", "clip not found")
            else:
                writer.put(row, arrays[row])
        parts.append(writer.close({"job": k}))
    merge_parts(cache_path, "audio.parts", reversed(parts), {"modality": "audio", "encoder_kind": "toy"})
    cache = validate(cache_path)
    fs = cache["audio.parts"]
    for i, arr in enumerate(arrays):
        np.testing.assert_array_equal(fs.get(i), np.zeros((0, 5)) if arr is None else arr)
    failures = cache.failures()
    assert sorted(f["row"] for f in failures) == [0, 4, 8]
    assert failures[0]["reason"] == "clip not found" and failures[0]["file"].startswith("/media/")
    assert fs.attrs["encoder_kind"] == "toy" and fs.attrs["n_failures"] == 3


def test_merge_refuses_gaps_overlaps_and_dim_mismatch(cache_path, tmp_path):
    def part(name, start, stop, dim=4):
        w = FeaturePartWriter(tmp_path / name, start, stop, dim=dim)
        for r in range(start, stop):
            w.put(r, np.ones((2, dim)))
        return w.close()

    with pytest.raises(CacheError, match="gap at row 6"):
        merge_parts(cache_path, "a.b", [part("p0", 0, 6), part("p1", 7, 12)], {})
    with pytest.raises(CacheError, match="overlap at row 5"):
        merge_parts(cache_path, "a.b", [part("p2", 0, 6), part("p3", 5, 12)], {})
    with pytest.raises(CacheError, match="cover rows 0..6 but the cache has 12"):
        merge_parts(cache_path, "a.b", [part("p4", 0, 6)], {})
    with pytest.raises(CacheError, match="disagree on dim"):
        merge_parts(cache_path, "a.b", [part("p5", 0, 6), part("p6", 6, 12, dim=3)], {})
    assert "a.b" not in open_cache(cache_path)  # nothing half-written became visible


def test_part_writer_writes_as_it_goes_in_bounded_memory(tmp_path):
    """Rows arriving out of order within windows are written in row order; memory stays one window."""
    rng = np.random.default_rng(5)
    n, dim, window = 400, 8, 20
    arrays = [rng.standard_normal((int(rng.integers(1, 30)), dim)).astype(np.float32) for _ in range(n)]
    writer = FeaturePartWriter(tmp_path / "p.zarr", 100, 100 + n, dim=dim, dtype="float32", flush_bytes=4096)
    window_bytes = []
    for start in range(0, n, window):
        rows = rng.permutation(np.arange(start, start + window))  # a window's batches finish in any order
        window_bytes.append(sum(arrays[r].nbytes for r in rows))
        for r in rows:
            if r % 37 == 0:
                writer.fail(100 + r, f"u{r}", "", "bad clip")
            else:
                writer.put(100 + r, arrays[r])
        assert writer.held_bytes < 4096  # a window complete: only the remainder of one chunk is held
    assert writer.peak_held_bytes <= max(window_bytes) + 4096  # never the whole part
    assert writer.peak_held_bytes < sum(a.nbytes for a in arrays) / 10
    with pytest.raises(CacheError, match="row 100 was already written"):
        writer.put(100, arrays[0])
    part = zarr.open_group(str(writer.close({"job": 0})), mode="r")
    assert part["values"].chunks[0] == 4096 // (dim * 4)  # written in ~flush_bytes chunks
    kept = [arrays[r] for r in range(n) if r % 37]
    np.testing.assert_array_equal(part["values"][...], np.concatenate(kept))
    assert part["present"][...].tolist() == [bool(r % 37) for r in range(n)]
    assert part["lengths"][...].tolist() == [len(arrays[r]) if r % 37 else 0 for r in range(n)]
    assert [f["row"] for f in part.attrs["failures"]] == [100 + r for r in range(0, n, 37)]
    assert not list(tmp_path.glob("p.zarr.tmp-*"))  # renamed into place


def test_aborted_part_writer_leaves_nothing(tmp_path):
    writer = FeaturePartWriter(tmp_path / "p.zarr", 0, 3, dim=2, flush_bytes=8)
    writer.put(0, np.ones((4, 2)))  # over one chunk: already on disk in the temporary part
    writer.abort()
    assert list(tmp_path.iterdir()) == []


def test_part_writer_rejects_bad_arrays(tmp_path):
    w = FeaturePartWriter(tmp_path / "p", 10, 20, dim=4)
    with pytest.raises(CacheError, match="row 9 outside"):
        w.put(9, np.ones((1, 4)))
    with pytest.raises(CacheError, match="row 11: expected a \\(T, 4\\) array"):
        w.put(11, np.ones((2, 3)))
    with pytest.raises(CacheError, match="row 12: array has NaN"):
        w.put(12, np.full((2, 4), np.nan))


def test_add_and_replace_feature_set_leave_others_untouched(cache_path):
    rng = np.random.default_rng(4)
    first = ragged(12, 4, rng)
    write_feature_set(cache_path, "text.a", first, {"modality": "text"}, dtype="float32")
    before = sorted(p.stat().st_mtime_ns for p in (cache_path / "features" / "text.a").rglob("*") if p.is_file())
    write_feature_set(cache_path, "audio.b", ragged(12, 3, rng), {"modality": "audio"})
    replacement = ragged(12, 4, rng)
    write_feature_set(cache_path, "audio.b", [a[:, :4] if a.shape[1] >= 4 else np.ones((1, 4)) for a in replacement], {"modality": "audio"})
    after = sorted(p.stat().st_mtime_ns for p in (cache_path / "features" / "text.a").rglob("*") if p.is_file())
    assert before == after
    cache = validate(cache_path)
    assert cache["audio.b"].dim == 4
    np.testing.assert_array_equal(cache["text.a"].get(3), first[3])
    delete_feature_set(cache_path, "audio.b")
    assert open_cache(cache_path).feature_names() == ["text.a"]


def test_adding_utterances_appends_and_conflicts_name_ids(cache_path):
    grown = make_table(15)
    create_cache(cache_path, grown)
    table = open_cache(cache_path).table
    assert len(table) == 15 and table.ids[14] == "u14"
    changed = make_table(3)
    changed.columns["text"][1] = "something else"
    changed.columns["label"][2] = 0
    with pytest.raises(CacheError, match=r"disagree for 2 id\(s\): u1 \(text.*u2 \(label"):
        create_cache(cache_path, changed)


def test_unchanged_table_leaves_files_alone(cache_path):
    stamp = (cache_path / "utterances" / "zarr.json").stat().st_mtime_ns
    create_cache(cache_path, make_table(12))
    assert (cache_path / "utterances" / "zarr.json").stat().st_mtime_ns == stamp


# ---------------------------------------------------------------- validation and corruption


def _values_cache(tmp_path: Path) -> Path:
    path = tmp_path / "v.zarr"
    create_cache(path, make_table(6))
    arrays = [np.full((i + 1, 2), i, dtype=np.float32) for i in range(6)]
    arrays[2] = None
    write_feature_set(path, "audio.v", arrays, {"modality": "audio"}, dtype="float32")
    return path


def _rewrite_array(group_path: Path, name: str, data: np.ndarray) -> None:
    group = zarr.open_group(str(group_path), mode="a")
    del group[name]
    dtype = str if data.dtype == object else data.dtype
    group.create_array(name, shape=data.shape, dtype=dtype, chunks=(max(1, len(data)),))[...] = data


def _set_attr(path: Path, key: str, value) -> None:
    meta = json.loads((path / "zarr.json").read_text())
    meta["attributes"][key] = value
    (path / "zarr.json").write_text(json.dumps(meta))


CORRUPTIONS = {
    "offsets do not start at 0": (
        lambda p: _rewrite_array(p / "features/audio.v", "offsets", np.array([1, 1, 3, 3, 7, 12, 18], dtype=np.int64)),
        "offsets start at 1, expected 0",
    ),
    "offsets decrease": (
        lambda p: _rewrite_array(p / "features/audio.v", "offsets", np.array([0, 1, 3, 2, 7, 12, 18], dtype=np.int64)),
        "offsets decrease at utterance 2",
    ),
    "offsets end before the values": (
        lambda p: _rewrite_array(p / "features/audio.v", "offsets", np.array([0, 1, 3, 3, 7, 12, 17], dtype=np.int64)),
        "offsets end at 17 but values has 18 rows",
    ),
    "offsets wrong length": (
        lambda p: _rewrite_array(p / "features/audio.v", "offsets", np.array([0, 1, 3, 3, 7, 18], dtype=np.int64)),
        "offsets has 6 entries, expected 7",
    ),
    "offsets wrong dtype": (
        lambda p: _rewrite_array(p / "features/audio.v", "offsets", np.array([0, 1, 3, 3, 7, 12, 18], dtype=np.int32)),
        "offsets dtype int32, expected int64",
    ),
    "absent utterance with rows": (
        lambda p: _rewrite_array(p / "features/audio.v", "present", np.ones(6, dtype=bool)),
        "marked present have no rows",
    ),
    "present utterance without rows": (
        lambda p: _rewrite_array(p / "features/audio.v", "present", np.array([0, 1, 0, 1, 1, 1], dtype=bool)),
        "marked absent have rows, first at 0",
    ),
    "dim attribute disagrees": (lambda p: _set_attr(p / "features/audio.v", "dim", 5), "values has dim 2 but attributes say 5"),
    "dtype attribute disagrees": (
        lambda p: _set_attr(p / "features/audio.v", "dtype", "float16"),
        "values dtype float32 but attributes say float16",
    ),
    "provenance missing": (
        lambda p: _set_attr(p / "features/audio.v", "checkpoint", None) or _drop_attr(p / "features/audio.v", "checkpoint"),
        "attributes missing ['checkpoint']",
    ),
    "duplicate ids": (
        lambda p: _rewrite_array(p / "utterances", "id", np.array(["u0", "u1", "u1", "u3", "u4", "u5"], dtype=object)),
        "duplicate ids ['u1']",
    ),
    "label out of range": (
        lambda p: _rewrite_array(p / "utterances", "label", np.array([0, 1, 2, 7, 0, 1], dtype=np.int32)),
        "utterances/label: 1 value(s) outside -1..2",
    ),
    "column length differs": (
        lambda p: _rewrite_array(p / "utterances", "text", np.array(["a", "b"], dtype=object)),
        "utterances/text: length 2 != n (6)",
    ),
    "missing column": (lambda p: zarr.open_group(str(p / "utterances"), mode="a").__delitem__("speaker"), "missing column 'speaker'"),
    "missing values array": (
        lambda p: shutil.rmtree(p / "features/audio.v/values"),
        "feature set 'audio.v'",
    ),
}


def _drop_attr(path: Path, key: str) -> None:
    meta = json.loads((path / "zarr.json").read_text())
    meta["attributes"].pop(key, None)
    (path / "zarr.json").write_text(json.dumps(meta))


@pytest.mark.parametrize("corruption", sorted(CORRUPTIONS))
def test_validate_names_each_corruption(tmp_path, corruption):
    path = _values_cache(tmp_path)
    validate(path)
    corrupt, message = CORRUPTIONS[corruption]
    corrupt(path)
    with pytest.raises(CacheValidationError) as info:
        validate(path)
    assert any(message in p for p in info.value.problems), info.value.problems
    result = CliRunner().invoke(fuse_cli, ["cache", "validate", str(path)])
    assert result.exit_code == 1 and message in result.output


def test_validate_reports_every_problem_at_once(tmp_path):
    path = _values_cache(tmp_path)
    _set_attr(path / "features/audio.v", "dim", 9)
    _rewrite_array(path / "utterances", "label", np.array([0, 1, 2, 9, 0, 1], dtype=np.int32))
    with pytest.raises(CacheValidationError) as info:
        validate(path)
    assert len(info.value.problems) == 2


def test_deep_validation_finds_non_finite_values(tmp_path):
    path = _values_cache(tmp_path)
    arr = zarr.open_array(str(path / "features/audio.v/values"), mode="a")
    arr[4, 1] = np.inf
    validate(path)  # shallow checks do not read values
    with pytest.raises(CacheValidationError, match="non-finite values at row 4 \\(utterance 3\\)"):
        validate(path, deep=True)


def test_not_a_cache_and_newer_schema_get_one_line_errors(tmp_path):
    with pytest.raises(NotACacheError, match="does not exist"):
        open_cache(tmp_path / "nope.zarr")
    (tmp_path / "plain").mkdir()
    with pytest.raises(NotACacheError, match="no zarr.json"):
        open_cache(tmp_path / "plain")
    zarr.open_group(str(tmp_path / "other.zarr"), mode="w")
    with pytest.raises(NotACacheError, match="not an emofuse cache"):
        open_cache(tmp_path / "other.zarr")
    path = _values_cache(tmp_path)
    meta = json.loads((path / "zarr.json").read_text())
    meta["attributes"]["emofuse_cache"]["schema_version"] = 2
    (path / "zarr.json").write_text(json.dumps(meta))
    with pytest.raises(SchemaVersionError, match="schema version 2 is not supported.*upgrade emofuse"):
        validate(path)
    for args in (["cache", "validate", str(path)], ["cache", "info", str(path)], ["cache", "info", str(tmp_path / "plain")]):
        result = CliRunner().invoke(fuse_cli, args)
        assert result.exit_code == 2
        assert result.output.startswith("error: ") and "Traceback" not in result.output
        assert len(result.output.strip().splitlines()) == 1


def test_create_refuses_foreign_directory(tmp_path):
    (tmp_path / "stuff").mkdir()
    (tmp_path / "stuff" / "notes.txt").write_text("mine")
    with pytest.raises(NotACacheError, match="refusing to write"):
        create_cache(tmp_path / "stuff", make_table(2))


def test_missing_feature_set_names_available(cache_path):
    write_feature_set(cache_path, "text.a", ragged(12, 2, np.random.default_rng(0)), {"modality": "text"})
    with pytest.raises(FeatureSetNotFound, match="no feature set 'audio.x' \\(available: text.a\\)"):
        open_cache(cache_path)["audio.x"]


# ---------------------------------------------------------------- CLI


def test_cache_info_summarises(cache_path):
    rng = np.random.default_rng(5)
    write_feature_set(cache_path, "text.a", ragged(12, 8, rng, missing_every=6), {"modality": "text"})
    result = CliRunner().invoke(fuse_cli, ["cache", "info", str(cache_path)])
    assert result.exit_code == 0, result.output
    assert "utterances: 12 (dev: 4, test: 4, train: 4)" in result.output
    row = next(line for line in result.output.splitlines() if line.startswith("text.a"))
    assert "8" in row.split() and "float16" in row and "83.3%" in row
    ok = CliRunner().invoke(fuse_cli, ["cache", "validate", str(cache_path)])
    assert ok.exit_code == 0 and "valid (schema v1, 12 utterances, 1 feature sets)" in ok.output


# ---------------------------------------------------------------- concurrency


def _reader_loop(path: str, name: str, rounds: int, queue) -> None:
    try:
        cache = open_cache(path)
        fs = cache[name]
        total = 0.0
        for r in range(rounds):
            values, _ = fs.batch(np.arange(len(fs)) if r % 2 else np.arange(len(fs))[::-1])
            total += float(values.sum())
            cache.refresh()
            fs = cache[name]
        queue.put(("ok", total))
    except Exception as exc:  # report to the parent
        queue.put(("error", repr(exc)))


def _writer(path: str, name: str) -> None:
    rng = np.random.default_rng(9)
    write_feature_set(path, name, ragged(12, 6, rng), {"modality": "video"})


def test_readers_keep_working_while_a_feature_set_is_added(cache_path):
    write_feature_set(cache_path, "text.a", ragged(12, 4, np.random.default_rng(6)), {"modality": "text"}, dtype="float32")
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    readers = [ctx.Process(target=_reader_loop, args=(str(cache_path), "text.a", 30, queue)) for _ in range(2)]
    writers = [ctx.Process(target=_writer, args=(str(cache_path), f"video.v{k}")) for k in range(2)]
    for p in readers + writers:
        p.start()
    for p in readers + writers:
        p.join(120)
    results = [queue.get(timeout=5) for _ in readers]
    assert all(status == "ok" for status, _ in results), results
    assert results[0][1] == results[1][1]
    assert open_cache(cache_path).feature_names() == ["text.a", "video.v0", "video.v1"]
    validate(cache_path)
