"""Layout 1.2 and `fuse cache upgrade`: old caches read, upgrade in place, refusals, failure safety,
and the linear merge (every shard written once, from one reused buffer)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import zarr
from click.testing import CliRunner

from cache_schema import (
    SCHEMA_MINOR,
    CacheError,
    FeaturePartWriter,
    UtteranceTable,
    cache_lock,
    create_cache,
    merge_parts,
    open_cache,
    outdated_feature_sets,
    upgrade_cache,
    validate,
)
from cache_schema import layout as L
from cache_schema import writer as W
from fuse.cli import main as fuse_cli

DIM = 768  # the old and new inner chunks differ at embedding dims (64 vs 1024 fp16 rows)


def _parts(folder: Path, lengths: list[int], n_parts: int, dtype="float16") -> list[Path]:
    rng = np.random.default_rng(0)
    bounds = np.linspace(0, len(lengths), n_parts + 1).astype(int)
    parts = []
    for k, (start, stop) in enumerate(zip(bounds[:-1], bounds[1:])):
        writer = FeaturePartWriter(folder / f"part{k}.zarr", int(start), int(stop), DIM, dtype)
        for row in range(start, stop):
            if lengths[row]:
                writer.put(row, rng.standard_normal((lengths[row], DIM)).astype(np.float32))
            else:
                writer.fail(row, f"u{row}", f"/m/{row}.wav", "no frames")
        parts.append(writer.close())
    return parts


def old_cache(tmp_path: Path, minor: int = 1) -> Path:
    """A cache as emofuse 1.`minor` wrote it: old values chunking, root schema_minor `minor`."""
    lengths = [0 if i % 7 == 3 else 20 + (i * 13) % 90 for i in range(40)]
    path = tmp_path / "feats.zarr"
    create_cache(path, UtteranceTable.from_records([{"id": f"u{i}", "text": f"t{i}"} for i in range(40)]))
    parts = _parts(tmp_path / "parts", lengths, 3)
    merge_parts(path, "audio.a", parts, {"modality": "audio", "encoder_kind": "toy", "extra": 7}, layout_minor=1)
    merge_parts(path, "text.b", parts, {"modality": "text"}, compression="zstd", layout_minor=1)
    meta = json.loads((path / "zarr.json").read_text())
    attrs = meta["attributes"][L.ROOT_ATTR]
    if minor:
        attrs["schema_minor"] = minor
    else:
        attrs.pop("schema_minor")
    (path / "zarr.json").write_text(json.dumps(meta))
    return path


def snapshot(path: Path) -> dict:
    cache = open_cache(path)
    out = {}
    for name, fs in cache.feature_sets().items():
        out[name] = (fs.values[...], fs.offsets.copy(), fs.present.copy(), fs.failures(), {k: v for k, v in fs.attrs.items() if k != "layout_upgraded"})
    return out


def assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        for x, y in zip(a[name][:3], b[name][:3]):
            np.testing.assert_array_equal(x, y)
        assert a[name][3:] == b[name][3:]


@pytest.mark.parametrize("minor", [0, 1])
def test_upgrade_rewrites_old_layout_in_place_with_identical_contents(tmp_path, minor):
    path = old_cache(tmp_path, minor)
    before = snapshot(path)  # old caches read as before
    assert open_cache(path).schema_minor == minor
    assert outdated_feature_sets(path) == ["audio.a", "text.b"]
    assert open_cache(path)["audio.a"].values.chunks[0] == L.chunk_rows(DIM, "float16", 1)[0] == 64

    result = CliRunner().invoke(fuse_cli, ["cache", "upgrade", str(path)])
    assert result.exit_code == 0, result.output
    assert f"upgraded to schema 1.{SCHEMA_MINOR}" in result.output and "audio.a, text.b" in result.output

    cache = validate(path, deep=True)
    assert cache.schema_minor == SCHEMA_MINOR
    assert outdated_feature_sets(path) == []
    assert cache["audio.a"].values.chunks[0] == L.chunk_rows(DIM, "float16")[0] == 1024
    assert cache["text.b"].attrs["compression"] == "zstd"
    assert cache["audio.a"].attrs["layout_upgraded"]["from_inner_chunk_rows"] == 64
    assert_same(before, snapshot(path))
    assert not any((path / L.STAGING).iterdir()), "staging left behind"


def test_upgrade_refuses_a_current_cache_with_one_line(tmp_path):
    path = old_cache(tmp_path)
    upgrade_cache(path)
    result = CliRunner().invoke(fuse_cli, ["cache", "upgrade", str(path)])
    assert result.exit_code == 2
    assert "already at schema" in result.output and str(path) in result.output
    assert len(result.output.strip().splitlines()) == 1 and "Traceback" not in result.output


def test_upgrade_refuses_a_cache_being_written(tmp_path):
    path = old_cache(tmp_path)
    with cache_lock(path):  # another writer (flock locks conflict across open files, even in one process)
        with pytest.raises(CacheError, match="another process is writing"):
            upgrade_cache(path)
    assert outdated_feature_sets(path) == ["audio.a", "text.b"]  # untouched


def test_failed_upgrade_leaves_the_old_cache_readable(tmp_path, monkeypatch):
    path = old_cache(tmp_path)
    before = snapshot(path)
    real_flush, calls = W._ShardAlignedAppender._flush, []

    def failing_flush(self):
        calls.append(1)
        if len(calls) == 2:  # the second set, mid-write
            raise OSError(28, "No space left on device")
        real_flush(self)

    monkeypatch.setattr(W._ShardAlignedAppender, "_flush", failing_flush)
    with pytest.raises(OSError, match="No space"):
        upgrade_cache(path)
    monkeypatch.undo()
    assert_same(before, snapshot(path))  # the first set was swapped in whole, the second not at all
    assert outdated_feature_sets(path) == ["text.b"]
    assert not any((path / L.STAGING).iterdir())
    validate(path, deep=True)
    assert upgrade_cache(path) == ["text.b"]  # and it can be finished later


def test_merge_writes_every_shard_once_in_order(tmp_path, monkeypatch):
    """The linear merge: one write per shard, shard-aligned, however the parts cut the rows."""
    monkeypatch.setattr(L, "TARGET_SHARD_BYTES", 4 * 1024 * 1024)  # ~2730 rows of 768 fp16 -> 2048-row shards
    lengths = [(i * 37) % 60 + 1 for i in range(150)]
    path = tmp_path / "c.zarr"
    create_cache(path, UtteranceTable.from_records([{"id": f"u{i}"} for i in range(150)]))
    parts = _parts(tmp_path / "parts", lengths, 7)
    writes = []
    real_flush = W._ShardAlignedAppender._flush

    def recording_flush(self):
        writes.append((self.written, self._filled, self.shard_rows))
        real_flush(self)

    monkeypatch.setattr(W._ShardAlignedAppender, "_flush", recording_flush)
    merge_parts(path, "audio.m", parts, {"modality": "audio"})
    total, shard = sum(lengths), writes[0][2]
    assert shard == 2048 and len(writes) == -(-total // shard)
    assert [w[0] for w in writes] == list(range(0, total, shard))
    assert all(w[1] == shard for w in writes[:-1]) and writes[-1][0] + writes[-1][1] == total
    fs = validate(path, deep=True)["audio.m"]
    expected = np.concatenate([zarr.open_group(str(p))["values"][...] for p in parts])
    np.testing.assert_array_equal(fs.values[...], expected)


def test_direct_block_reads_equal_zarr_reads_and_check_every_chunk(tmp_path):
    """FeatureSet.block_rows reads uncompressed sets straight from the shard files (direct.py)."""
    path = old_cache(tmp_path)
    upgrade_cache(path)
    merge_parts(path, "audio.old", _parts(tmp_path / "p2", [30 + i % 50 for i in range(40)], 2), {"modality": "audio"}, layout_minor=1)
    cache = open_cache(path)
    assert cache["text.b"]._direct is None  # zstd: read through zarr
    rng = np.random.default_rng(3)
    for name in ("audio.a", "audio.old"):
        fs = cache[name]
        assert fs._direct is not None and fs._direct.inner_rows == fs.values.chunks[0]
        full = fs.values[...]
        rows = len(full)
        for lo, hi in [(0, rows), (0, 1), (rows - 1, rows), (5, rows + 100), (7, 7)] + [tuple(sorted(rng.integers(0, rows, 2))) for _ in range(20)]:
            np.testing.assert_array_equal(fs.block_rows(lo, hi), full[lo:hi])
    shard = path / "features/audio.a/values/c/0/0"
    data = bytearray(shard.read_bytes())
    data[2 * DIM * 2 * 3 + 1] ^= 0x10  # a value in row 6, inside the first inner chunk
    shard.write_bytes(bytes(data))
    with pytest.raises(CacheError, match="fails its CRC32C check"):
        open_cache(path)["audio.a"].block_rows(0, 10)


def test_direct_reads_go_in_bounded_groups_each_checked(tmp_path, monkeypatch):
    """A shard is read `group_bytes` at a time (CRCs checked while the bytes are in cache), the
    rows unchanged, and a damaged chunk in a later group still fails its check."""
    import cache_schema.direct as direct

    path = old_cache(tmp_path)
    merge_parts(path, "audio.old", _parts(tmp_path / "p2", [30 + i % 50 for i in range(40)], 2), {"modality": "audio"}, layout_minor=1)
    fs = open_cache(path)["audio.old"]
    full = fs.values[...]
    reader = fs._direct
    reader.group_bytes = 3 * (reader.chunk_bytes + 4)
    sizes = []
    real_preadv = os.preadv
    monkeypatch.setattr(direct.os, "preadv", lambda fd, buffers, offset: sizes.append(sum(memoryview(b).nbytes for b in buffers)) or real_preadv(fd, buffers, offset))
    np.testing.assert_array_equal(fs.block_rows(0, len(full)), full)
    np.testing.assert_array_equal(fs.block_rows(100, len(full) - 70), full[100:-70])
    assert len(full) // reader.inner_rows > 12 and max(sizes) == reader.group_bytes and len(sizes) > 8
    shard = path / "features/audio.old/values/c/0/0"
    data = bytearray(shard.read_bytes())
    data[10 * (reader.chunk_bytes + 4) + 5] ^= 0x10  # inside inner chunk 10: the fourth group
    shard.write_bytes(bytes(data))
    fs = open_cache(path)["audio.old"]
    fs._direct.group_bytes = reader.group_bytes
    with pytest.raises(CacheError, match="inner chunk 10 fails its CRC32C check"):
        fs.block_rows(0, len(full))


@pytest.mark.parametrize("rows, inner, shard, dim, dtype", [(5000, 1024, 4096, 16, "float16"), (37, 16, 32, 5, "float32"), (10, 16, 16, 3, "float16")])
def test_direct_shard_writes_are_byte_identical_to_zarr(tmp_path, rows, inner, shard, dim, dtype):
    """direct.write_shard (the merge's writer for uncompressed sets) writes exactly zarr's bytes."""
    from cache_schema.direct import DirectValues, write_shard

    data = np.random.default_rng(rows).standard_normal((rows, dim)).astype(dtype)
    spec = dict(shape=data.shape, dtype=dtype, chunks=(inner, dim), shards=(shard, dim), compressors=[zarr.codecs.Crc32cCodec()], fill_value=np.nan)
    zarr.create_array(str(tmp_path / "by_zarr"), **spec)[...] = data
    zarr.create_array(str(tmp_path / "direct"), **spec)
    direct = DirectValues.eligible(tmp_path / "direct")
    for k, lo in enumerate(range(0, rows, shard)):
        write_shard(direct, k, data[lo : lo + shard])
    for k in range(-(-rows // shard)):
        assert (tmp_path / f"direct/c/{k}/0").read_bytes() == (tmp_path / f"by_zarr/c/{k}/0").read_bytes()
    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "direct"))[...], data)
    assert sorted(p.name for p in (tmp_path / "direct/c").rglob("*") if p.is_file()) == ["0"] * len(range(0, rows, shard))  # no temp files left


def test_direct_reader_checks_each_chunk_once_per_unchanged_file(tmp_path):
    """A chunk that passed its CRC is trusted while its shard file is the same file (inode, size,
    mtime); any rewrite, and `forget_verified`, make the next read check it again."""
    path = old_cache(tmp_path)
    upgrade_cache(path)
    fs = open_cache(path)["audio.a"]
    first = fs.block_rows(0, 10).copy()
    shard = path / "features/audio.a/values/c/0/0"
    stat = shard.stat()
    data = bytearray(shard.read_bytes())
    data[2 * DIM * 2 * 3 + 1] ^= 0x10  # a value in row 6, inside the first inner chunk
    shard.write_bytes(bytes(data))  # in place: same inode and size
    os.utime(shard, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # ... and the old mtime: "the same file"
    trusted = fs.block_rows(0, 10)
    assert not np.array_equal(trusted, first)  # read again, not re-checked (the bytes are the file's)
    fs._direct.forget_verified()
    with pytest.raises(CacheError, match="fails its CRC32C check"):
        fs.block_rows(0, 10)
    original = bytes(data)
    data[2 * DIM * 2 * 3 + 1] ^= 0x10
    shard.write_bytes(bytes(data))  # repaired, same mtime again
    os.utime(shard, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    np.testing.assert_array_equal(fs.block_rows(0, 10), first)  # checked, passes, trusted from now on
    shard.write_bytes(original)  # damaged again, with a later mtime: checked without being told
    os.utime(shard, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    with pytest.raises(CacheError, match="fails its CRC32C check"):
        fs.block_rows(0, 10)
