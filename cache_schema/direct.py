"""Block reads of `values` straight from the shard files, at close to raw read speed.

zarr-python decodes a sharded array inner chunk by inner chunk (a read per chunk, a view,
then a copy into the output, with event-loop overhead per chunk): a block scan of 768-d fp16
ran at 0.03-0.15 of `np.fromfile` of the same files warm (bench/cache_layout.py). For the
layout emofuse writes uncompressed (inner codecs `bytes` + `crc32c`, index at the end;
LAYOUT.md) the bytes of a row range are the rows themselves, so `read_rows` scatters each
shard's inner chunks straight into the output array with `preadv` and checks every inner
chunk's CRC32C, exactly as zarr would. Partly covered chunks at the ends of a range are read
whole (their CRC needs all of it) and copied. Anything else (compressed sets, remote stores,
another layout) is not `eligible` and reads through zarr.

A shard's chunks are read in groups of at most `DirectValues.group_bytes` (4 MiB: two 1.5 MiB
chunks of 768-d fp16), each group's CRCs checked right after its `preadv`, while its bytes are
still in the 32 MiB L3 cache; checking them after one `preadv` of the whole ~64 MiB shard read
every byte back from DRAM. Measured (scratch A/B on bench/cache_io.py's 100k-utterance set,
warm, freshly opened, 3 alternating rounds in one process): first pass 0.59 of raw with 4 MiB
groups vs 0.48 with whole-shard ones; later passes, whose chunks are already checked, 0.88 vs
0.89.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import google_crc32c
import numpy as np

from .errors import CacheError

_BYTES_CRC = [{"name": "bytes", "configuration": {"endian": "little"}}, {"name": "crc32c"}]
_EMPTY = np.uint64(2**64 - 1)  # zarr's marker of an inner chunk that was never written
_IOV_MAX = 1024


class DirectValues:
    """Reads rows of one feature set's `values` (a local folder) without zarr's decode path."""

    group_bytes = 4 << 20  # most bytes per preadv: its CRCs are checked while still in cache (module docstring)

    def __init__(self, folder: Path, meta: dict):
        self.folder = folder
        self.shape = tuple(meta["shape"])
        self.dtype = np.dtype(meta["data_type"]).newbyteorder("<")
        sharding = meta["codecs"][0]["configuration"]
        self.shard_rows = int(meta["chunk_grid"]["configuration"]["chunk_shape"][0])
        self.inner_rows = int(sharding["chunk_shape"][0])
        self.chunks_per_shard = self.shard_rows // self.inner_rows
        self.row_bytes = self.shape[1] * self.dtype.itemsize
        self.chunk_bytes = self.inner_rows * self.row_bytes
        # Per shard: (file identity, its inner-chunk index, which inner chunks passed their CRC).
        self._shards: dict[int, tuple[tuple[int, int, int], np.ndarray, np.ndarray]] = {}

    @classmethod
    def eligible(cls, folder: str | os.PathLike) -> "DirectValues | None":
        """A reader for `folder` (a values array) if it has the layout this module reads, else None."""
        meta_file = Path(folder) / "zarr.json"
        try:
            meta = json.loads(meta_file.read_text())
        except (OSError, ValueError):
            return None
        codecs = meta.get("codecs") or []
        if len(codecs) != 1 or codecs[0].get("name") != "sharding_indexed" or len(meta.get("shape", [])) != 2:
            return None
        conf = codecs[0].get("configuration", {})
        outer = meta.get("chunk_grid", {}).get("configuration", {}).get("chunk_shape", [])
        key = meta.get("chunk_key_encoding", {})
        if (
            conf.get("codecs") != _BYTES_CRC
            or conf.get("index_codecs") != _BYTES_CRC
            or conf.get("index_location", "end") != "end"
            or meta.get("data_type") not in ("float16", "float32")
            or meta.get("storage_transformers")
            or key.get("name") != "default"
            or key.get("configuration", {}).get("separator", "/") != "/"
            or len(outer) != 2
            or outer[1] != meta["shape"][1]
            or conf.get("chunk_shape", [None, None])[1] != meta["shape"][1]
            or outer[0] % conf["chunk_shape"][0]
        ):
            return None
        return cls(Path(folder), meta)

    def _shard_state(self, k: int, fd: int, path: Path) -> tuple[np.ndarray, np.ndarray]:
        """Shard k's (chunks, 2) inner-chunk offsets and lengths (CRC-checked), and the mask of
        its inner chunks already verified, both reset whenever the file is not the one seen."""
        st = os.fstat(fd)
        identity = (st.st_ino, st.st_size, st.st_mtime_ns)
        known = self._shards.get(k)
        if known is not None and known[0] == identity:
            return known[1], known[2]
        size = self.chunks_per_shard * 16 + 4
        raw = os.pread(fd, size, max(0, st.st_size - size))
        if len(raw) != size:
            raise CacheError(f"values shard file {path} is truncated (no complete shard index)")
        index = np.frombuffer(raw[:-4], dtype="<u8").reshape(-1, 2)
        if np.uint32(google_crc32c.value(raw[:-4])).tobytes() != raw[-4:]:
            raise CacheError(f"values shard file {path}: the shard index fails its CRC32C check (damaged file)")
        verified = np.zeros(self.chunks_per_shard, dtype=bool)
        self._shards[k] = (identity, index, verified)
        return index, verified

    def forget_verified(self) -> None:
        """Check every chunk's CRC again on its next read (as a freshly opened cache does)."""
        self._shards.clear()

    def read_rows(self, lo: int, hi: int) -> np.ndarray:
        """Rows lo..hi-1 (clipped to the array) as one (n, dim) array."""
        lo, hi = max(0, lo), min(hi, self.shape[0])
        out = np.empty((max(0, hi - lo), self.shape[1]), dtype=self.dtype)
        flat = out.reshape(-1).view(np.uint8)
        row = lo
        while row < hi:
            k = row // self.shard_rows
            stop = min(hi, (k + 1) * self.shard_rows)
            self._read_shard_part(k, row, stop, flat[(row - lo) * self.row_bytes : (stop - lo) * self.row_bytes])
            row = stop
        return out

    def _read_shard_part(self, k: int, lo: int, hi: int, dest: np.ndarray) -> None:
        path = self.folder / "c" / str(k) / "0"
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            raise CacheError(f"values shard file {path} is missing (rows {k * self.shard_rows}..)") from None
        try:
            index, verified = self._shard_state(k, fd, path)
            base = k * self.shard_rows
            first, last = (lo - base) // self.inner_rows, (hi - 1 - base) // self.inner_rows
            crcs = np.empty((last - first + 1, 4), dtype=np.uint8)
            iov: list[list] = []  # [file offset, end offset, buffers, chunks covered] per group of one contiguous run
            edges = []
            for j in range(first, last + 1):
                offset, nbytes = index[j]
                if offset == _EMPTY or nbytes != self.chunk_bytes + 4:
                    raise CacheError(f"values shard file {path}: inner chunk {j} is missing or not the size this layout has")
                c_lo, c_hi = base + j * self.inner_rows, base + (j + 1) * self.inner_rows
                if c_lo < lo or c_hi > hi:
                    edges.append((j, c_lo))
                    continue
                payload = dest[(c_lo - lo) * self.row_bytes : (c_hi - lo) * self.row_bytes]
                if iov and iov[-1][1] == offset and len(iov[-1][2]) < _IOV_MAX - 1 and iov[-1][1] + nbytes - iov[-1][0] <= self.group_bytes:
                    iov[-1][1] += int(nbytes)
                    iov[-1][2].extend([payload, crcs[j - first]])
                    iov[-1][3].append(j)
                else:
                    iov.append([int(offset), int(offset + nbytes), [payload, crcs[j - first]], [j]])
            for offset, end, buffers, covered in iov:
                if os.preadv(fd, buffers, offset) != end - offset:
                    raise CacheError(f"values shard file {path} is truncated")
                for j, payload in zip(covered, buffers[0::2]):
                    if not verified[j]:
                        self._check(payload, crcs[j - first], path, j)
                        verified[j] = True
            for j, c_lo in edges:
                offset, _ = index[j]
                raw = np.frombuffer(os.pread(fd, self.chunk_bytes + 4, int(offset)), dtype=np.uint8)
                if len(raw) != self.chunk_bytes + 4:
                    raise CacheError(f"values shard file {path} is truncated")
                if not verified[j]:
                    self._check(raw[:-4], raw[-4:], path, j)
                    verified[j] = True
                a, b = max(lo, c_lo), min(hi, c_lo + self.inner_rows)
                dest[(a - lo) * self.row_bytes : (b - lo) * self.row_bytes] = raw[(a - c_lo) * self.row_bytes : (b - c_lo) * self.row_bytes]
        finally:
            os.close(fd)

    @staticmethod
    def _check(payload: np.ndarray, stored: np.ndarray, path: Path, j: int) -> None:
        if np.uint32(google_crc32c.value(payload)).tobytes() != stored.tobytes():
            raise CacheError(f"values shard file {path}: inner chunk {j} fails its CRC32C check (damaged file)")


def write_shard(values: DirectValues, k: int, rows: np.ndarray) -> None:
    """Write shard k of `values` (rows k*S .. k*S+len(rows), a whole shard or the array's last
    one) as zarr's sharding codec would: each inner chunk raw + CRC32C, then the index + CRC32C.

    One `writev` of views of `rows` (no copies but the padding of a partial last chunk), into a
    temporary file renamed into place, so a shard file is never seen half-written.
    """
    rows = np.ascontiguousarray(rows, dtype=values.dtype)
    payload = rows.reshape(-1).view(np.uint8)
    n_chunks = -(-len(rows) // values.inner_rows)
    index = np.full((values.chunks_per_shard, 2), _EMPTY, dtype="<u8")
    buffers: list = []
    offset = 0
    for j in range(n_chunks):
        chunk = payload[j * values.chunk_bytes : (j + 1) * values.chunk_bytes]
        if len(chunk) < values.chunk_bytes:  # the array's last inner chunk: zarr pads it with the fill value
            padded = np.full((values.inner_rows, values.shape[1]), np.nan, dtype=values.dtype).reshape(-1).view(np.uint8)
            padded[: len(chunk)] = chunk
            chunk = padded
        buffers += [chunk, np.uint32(google_crc32c.value(chunk)).astype("<u4").tobytes()]
        index[j] = (offset, values.chunk_bytes + 4)
        offset += values.chunk_bytes + 4
    index_bytes = index.tobytes()
    buffers += [index_bytes, np.uint32(google_crc32c.value(index_bytes)).astype("<u4").tobytes()]
    path = values.folder / "c" / str(k) / "0"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".0.tmp-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for start in range(0, len(buffers), _IOV_MAX):
            batch = buffers[start : start + _IOV_MAX]
            want = sum(memoryview(b).nbytes for b in batch)
            done = os.writev(fd, batch)
            if done != want:  # a short write (rare on regular files): finish it byte-wise
                rest = b"".join(bytes(memoryview(b).cast("B")) for b in batch)[done:]
                while rest:
                    rest = rest[os.write(fd, rest) :]
    finally:
        os.close(fd)
    os.replace(tmp, path)
    values._shards.pop(k, None)
