"""Property-based fuzzing (hypothesis) of the two readers that meet untrusted bytes.

* The CMU-MOSEI .csd reader (extract.corpora.mosei): random small computational sequences
  (shapes, intervals, dtypes, missing datasets, non-finite values) plus random byte damage
  (bit flips, truncation, zeroed runs). Only CorpusError may escape; whatever loads must obey
  the documented output contract.
* The cache (cache_schema): random ragged shapes split into random parts, merged with tiny
  chunk/shard sizes so that reads cross many shards, must round trip exactly; random damage
  to any file of a cache must raise only CacheError (naming the cache).

Examples are kept modest (max_examples 30-40, deadline=None) so the file runs in well under a
minute. Fuzz tests that document a bug are derandomised, so their `xfail(strict=True)` is
deterministic. Already proven elsewhere: packing/unpacking properties and a simple cache round
trip (test_cache_schema.py::test_pack_unpack_rows_pad_properties,
::test_cache_round_trip_property), manifest CSV/JSONL fuzzing
(test_corpora.py::test_manifest_csv_fuzz_only_corpus_errors_escape, ::..._jsonl_...).
"""
from __future__ import annotations

import contextlib
import shutil
import tempfile
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, event, given, settings
from hypothesis import strategies as st

import cache_schema.layout as cache_layout
from cache_schema import (
    CacheError,
    FeaturePartWriter,
    NotACacheError,
    SchemaVersionError,
    UtteranceTable,
    create_cache,
    merge_parts,
    open_cache,
    validate,
    write_feature_set,
)
from extract.corpora import CorpusError, load_mosei_csd, mosei_feature_arrays

# --------------------------------------------------------------------------- .csd reader

VIDEO_NAMES = ["-vid0", "vid_1", "vid 2", "vïd3"]
STRUCTURE_DAMAGE = [None] * 21 + ["no intervals", "no features", "flat intervals", "transposed features",
                                 "root without data", "second root", "video as dataset"]


def _damage_bytes(path: Path, data: st.DataObject) -> None:
    raw = bytearray(path.read_bytes())
    kind = data.draw(st.sampled_from(["flip", "truncate", "zero run"]), label="byte damage")
    if kind == "flip":
        for _ in range(data.draw(st.integers(1, 8), label="flips")):
            position = data.draw(st.integers(0, len(raw) - 1), label="flip at")
            raw[position] ^= 1 << data.draw(st.integers(0, 7), label="bit")
    elif kind == "truncate":
        raw = raw[: data.draw(st.integers(0, len(raw) - 1), label="truncate to")]
    else:
        start = data.draw(st.integers(0, len(raw) - 1), label="zero from")
        length = data.draw(st.integers(1, 512), label="zero length")
        raw[start : start + length] = bytes(len(raw[start : start + length]))
    path.write_bytes(bytes(raw))


def _write_sequence(path: Path, root: str, videos: dict, damage: str | None, gzip: bool) -> None:
    options = {"compression": "gzip"} if gzip else {}
    with h5py.File(path, "w") as f:
        data_group = f.create_group(root) if damage == "root without data" else f.create_group(f"{root}/data")
        if damage == "second root":
            f.create_group("other/data")
        for index, (video, (intervals, features)) in enumerate(videos.items()):
            if damage == "root without data":
                break
            if damage == "video as dataset" and index == 0:
                data_group.create_dataset(video, data=features, **options)
                continue
            group = data_group.create_group(video)
            if not (damage == "no intervals" and index == 0):
                group.create_dataset("intervals", data=intervals.ravel() if damage == "flat intervals" else intervals, **options)
            if not (damage == "no features" and index == 0):
                group.create_dataset("features", data=features.T if damage == "transposed features" else features, **options)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_csd_reader_fuzz_only_corpus_errors_escape(data):
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))
    videos = data.draw(st.lists(st.sampled_from(VIDEO_NAMES), min_size=1, max_size=3, unique=True), label="videos")
    labels, covarep = {}, {}
    for video in videos:
        n_segments = data.draw(st.integers(0, 4), label="segments")
        starts = rng.uniform(0, 5, n_segments)
        durations = rng.uniform(-0.5, 3, n_segments)  # some reversed/empty segments
        intervals = np.stack([starts, starts + durations], axis=1).reshape(n_segments, 2)
        values = rng.uniform(-3, 3, (n_segments, 7))
        if n_segments and data.draw(st.integers(0, 9), label="nan label") == 9:
            values[0, 0] = np.nan
        # (string labels are left out: a known bug, test_reliability_inputs.py::test_non_numeric_labels_are_a_corpus_error)
        labels[video] = (intervals, values)
        if data.draw(st.integers(0, 5), label="video in covarep") == 0:
            continue  # absent from the feature file
        n_frames = data.draw(st.integers(0, 40), label="frames")
        rate = data.draw(st.sampled_from([10.0, 100.0]), label="rate")
        dim = data.draw(st.sampled_from([74] * 8 + [73, 1]), label="dim")
        frame_starts = np.sort(rng.uniform(0, 6, n_frames))
        frame_intervals = np.stack([frame_starts, frame_starts + 1 / rate], axis=1).reshape(n_frames, 2)
        features = rng.normal(size=(n_frames, dim))
        if n_frames:
            for value in data.draw(st.lists(st.sampled_from([np.nan, np.inf, -np.inf]), max_size=3), label="non-finite"):
                features[rng.integers(n_frames), rng.integers(dim)] = value
        dtype = data.draw(st.sampled_from(["float32"] * 6 + ["float64", "int16", "S3"]), label="dtype")
        if dtype == "int16":
            features = np.clip(np.nan_to_num(features), -100, 100)
        features = features.astype(dtype)
        covarep[video] = (frame_intervals, features)

    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        damaged_file = data.draw(st.sampled_from(["labels", "covarep"]), label="file to damage")
        structure = data.draw(st.sampled_from(STRUCTURE_DAMAGE), label="structure damage")
        gzip = data.draw(st.booleans(), label="gzip")
        _write_sequence(root / "CMU_MOSEI_Labels.csd", "All Labels", labels, structure if damaged_file == "labels" else None, gzip)
        _write_sequence(root / "CMU_MOSEI_COVAREP.csd", "COVAREP", covarep, structure if damaged_file == "covarep" else None, gzip)
        if data.draw(st.integers(0, 3), label="byte damage?") == 0:
            _damage_bytes(root / ("CMU_MOSEI_Labels.csd" if damaged_file == "labels" else "CMU_MOSEI_COVAREP.csd"), data)
        try:
            table = load_mosei_csd(str(root), words_file=None)
            result = mosei_feature_arrays(str(root), table, "covarep")
        except CorpusError as error:
            assert str(root) in str(error) or "utterance table" in str(error)
            event("refused with CorpusError")
            return
    event("loaded")
    # whatever loads obeys the contract: one entry per row, finite (n >= 1, 74) float32 or None with a note
    assert len(result.arrays) == len(result.notes) == len(table)
    assert len(set(table.ids)) == len(table)
    for array, note in zip(result.arrays, result.notes):
        if array is None:
            assert note
        else:
            assert array.dtype == np.float32 and array.ndim == 2 and array.shape[0] >= 1 and array.shape[1] == 74
            assert np.isfinite(array).all() and not note


# --------------------------------------------------------------------------- cache round trip


@contextlib.contextmanager
def tiny_chunks(chunk_bytes: int | None, shard_bytes: int | None):
    """Shrink the writer's chunk/shard targets so that small sets span many shards."""
    with pytest.MonkeyPatch.context() as patch:
        if chunk_bytes:
            patch.setattr(cache_layout, "TARGET_CHUNK_BYTES", chunk_bytes)
        if shard_bytes:
            patch.setattr(cache_layout, "TARGET_SHARD_BYTES", shard_bytes)
        yield


def _table(n: int) -> UtteranceTable:
    return UtteranceTable.from_records([{"id": f"u{i}", "text": f"text {i}"} for i in range(n)])


@pytest.mark.slow
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    lengths=st.lists(st.integers(0, 30), min_size=1, max_size=20),
    dim=st.integers(1, 8),
    dtype=st.sampled_from(["float16", "float32"]),
    cut_points=st.lists(st.integers(1, 19), max_size=4),
    sizes=st.sampled_from([(None, None), (256, 2048), (64, 512)]),
    compression=st.sampled_from([None, "zstd"]),
    data=st.data(),
)
def test_cache_ragged_round_trip_across_parts_and_shards(lengths, dim, dtype, cut_points, sizes, compression, data):
    n = len(lengths)
    rng = np.random.default_rng(sum(lengths) * 31 + dim)
    arrays = [None if t == 0 else rng.standard_normal((t, dim)).astype(np.float32) for t in lengths]
    bounds = [0] + sorted({c for c in cut_points if c < n}) + [n]
    with tempfile.TemporaryDirectory() as folder, tiny_chunks(*sizes):
        path = Path(folder) / "c.zarr"
        create_cache(path, _table(n))
        parts = []
        for k, (start, stop) in enumerate(zip(bounds[:-1], bounds[1:])):
            writer = FeaturePartWriter(Path(folder) / f"part{k}", start, stop, dim, dtype)
            for row in reversed(range(start, stop)):  # rows may arrive in any order
                if arrays[row] is None:
                    writer.fail(row, f"u{row}", f"/m/{row}.wav", "no frames")
                else:
                    writer.put(row, arrays[row])
            parts.append(writer.close())
        merge_parts(path, "x.y", list(reversed(parts)), {"modality": "audio"}, compression=compression)
        fs = validate(path, deep=True)["x.y"]
        assert fs.lengths.tolist() == lengths and fs.present.tolist() == [t > 0 for t in lengths]
        expected = [np.zeros((0, dim), dtype) if a is None else a.astype(dtype) for a in arrays]
        picks = data.draw(st.lists(st.integers(0, n - 1), max_size=12), label="batch rows (repeats allowed)")
        flat, got_lengths = fs.rows(picks)
        np.testing.assert_array_equal(flat, np.concatenate([expected[i] for i in picks]) if picks else np.zeros((0, dim)))
        padded, batch_lengths = fs.batch(picks)
        for k, i in enumerate(picks):
            np.testing.assert_array_equal(padded[k, : batch_lengths[k]], expected[i])
            assert not padded[k, batch_lengths[k]:].any()
        for start, stop in fs.iter_blocks(target_rows=data.draw(st.integers(1, 64), label="block rows")):
            values, offsets = fs.block(start, stop)
            for k, i in enumerate(range(start, stop)):
                np.testing.assert_array_equal(values[offsets[k] : offsets[k + 1]], expected[i])
        assert sorted(f["row"] for f in fs.failures()) == [i for i, t in enumerate(lengths) if t == 0]


# --------------------------------------------------------------------------- cache damage


@pytest.fixture(scope="module")
def pristine_cache(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("pristine") / "c.zarr"
    records = [{"id": f"u{i}", "text": f"t{i}", "label": i % 2, "speaker": f"s{i % 3}"} for i in range(8)]
    create_cache(path, UtteranceTable.from_records(records, label_names=["a", "b"]))
    arrays = [None if i == 3 else np.full((i + 1, 4), i, np.float32) for i in range(8)]
    write_feature_set(path, "audio.a", arrays, {"modality": "audio"}, dtype="float32",
                      failures=[{"row": 3, "utterance_id": "u3", "file": "/m/3.wav", "reason": "file not found"}])
    return path


def _damage_file(path: Path, data: st.DataObject) -> None:
    kind = data.draw(st.sampled_from(["flip", "truncate", "garbage", "delete", "empty"]), label="damage")
    raw = bytearray(path.read_bytes())
    if kind == "delete":
        path.unlink()
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "garbage":
        path.write_bytes(data.draw(st.binary(max_size=64), label="garbage"))
    elif kind == "truncate":
        path.write_bytes(bytes(raw[: data.draw(st.integers(0, max(0, len(raw) - 1)), label="truncate to")]))
    else:
        for _ in range(data.draw(st.integers(1, 4), label="flips")):
            position = data.draw(st.integers(0, len(raw) - 1), label="flip at")
            raw[position] ^= 1 << data.draw(st.integers(0, 7), label="bit")
        path.write_bytes(bytes(raw))


def _read_everything(path: Path) -> None:
    cache = open_cache(path)
    cache.table
    for fs in cache.feature_sets().values():
        fs.batch(np.arange(len(fs)))
        fs.failures()
    validate(path, deep=True)


@settings(max_examples=40, deadline=None, derandomize=True, database=None, phases=[Phase.generate],
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_damaged_cache_files_raise_only_cache_errors(pristine_cache, data):
    """Documented (docs/reliability.md, LAYOUT.md): damage to any cache file surfaces as a CacheError
    subclass naming the cache, never as a zarr/numpy/JSON error, and CRC-protected values never read
    differently without one."""
    reference = open_cache(pristine_cache)["audio.a"].batch(np.arange(8))[0]
    files = sorted(p.relative_to(pristine_cache) for p in pristine_cache.rglob("*") if p.is_file() and p.name != ".emofuse.lock")
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "c.zarr"
        shutil.copytree(pristine_cache, path)
        _damage_file(path / data.draw(st.sampled_from(files), label="file"), data)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # zarr warns about unrecognised objects
            try:
                _read_everything(path)
                values = open_cache(path)["audio.a"].batch(np.arange(8))[0]
            except Exception as error:  # noqa: BLE001 - the type is what is asserted
                assert isinstance(error, CacheError), f"{type(error).__name__} escaped: {error}"
                assert str(path) in str(error), f"error does not name the cache: {error}"
                event(f"refused: {type(error).__name__}")
                return
    event("read without error")
    np.testing.assert_array_equal(values, reference)  # validate(deep) passed: the values are the pristine ones


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_damaged_root_metadata_is_refused_or_harmless(pristine_cache, data):
    """Never silently different: damage to the root zarr.json either stops the reader with the documented
    NotACacheError / SchemaVersionError naming the cache, or changes nothing that matters."""
    reference = open_cache(pristine_cache)
    expected_values, _ = reference["audio.a"].batch(np.arange(8))
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "c.zarr"
        shutil.copytree(pristine_cache, path)
        _damage_file(path / "zarr.json", data)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                cache = open_cache(path)
                table, names = cache.table, cache.feature_names()
                values, _ = cache["audio.a"].batch(np.arange(8))
            except Exception as error:  # noqa: BLE001 - the type is what is asserted
                # documented refusals of a damaged root zarr.json: NotACacheError / SchemaVersionError
                assert isinstance(error, (NotACacheError, SchemaVersionError)), f"{type(error).__name__} escaped: {error}"
                assert str(path) in str(error)
                event(f"refused: {type(error).__name__}")
                return
        event("harmless")
        # the damage missed everything that matters (e.g. a timestamp): the cache reads as before
        assert cache.schema_version == 1
        assert list(table.ids) == list(reference.table.ids) and names == ["audio.a"]
        np.testing.assert_array_equal(values, expected_values)


@pytest.mark.parametrize("text", ["0", "[]", '"x"', '{"attributes": 3}'])
def test_root_metadata_that_is_json_but_not_an_object_is_refused(pristine_cache, tmp_path, text):
    # Found by the fuzz test above: a zarr.json reading `0` escaped as an AttributeError.
    path = tmp_path / "c.zarr"
    shutil.copytree(pristine_cache, path)
    (path / "zarr.json").write_text(text)
    with pytest.raises(NotACacheError, match="c.zarr"):
        open_cache(path)
