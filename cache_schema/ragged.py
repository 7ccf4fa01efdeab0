"""Packing a list of (T_i, D) arrays into one values array plus offsets, and back.

This is the whole trick of the layout: utterance i occupies rows offsets[i]:offsets[i+1]
of `values`. Keeping it in one place keeps writer, reader and tests in agreement.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np


def lengths_to_offsets(lengths: Sequence[int] | np.ndarray) -> np.ndarray:
    lengths = np.asarray(lengths, dtype=np.int64)
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return offsets


def pack(arrays: Sequence[np.ndarray | None], dim: int, dtype: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(values, offsets, present) for a list of per-utterance arrays; None means missing."""
    present = np.array([a is not None for a in arrays], dtype=bool)
    parts = [np.asarray(a, dtype=dtype).reshape(-1, dim) for a in arrays if a is not None]
    lengths = [0 if a is None else np.asarray(a).reshape(-1, dim).shape[0] for a in arrays]
    values = np.concatenate(parts, axis=0) if parts else np.zeros((0, dim), dtype=dtype)
    return values, lengths_to_offsets(lengths), present


def unpack(values: np.ndarray, offsets: np.ndarray) -> list[np.ndarray]:
    return [values[offsets[i] : offsets[i + 1]] for i in range(len(offsets) - 1)]


def rows_for(offsets: np.ndarray, indices: np.ndarray, max_len: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Concatenated row numbers of the given utterances, and their lengths (vectorised).

    With `max_len`, only the first `max_len` rows of each utterance.
    """
    starts = offsets[indices]
    lengths = offsets[indices + 1] - starts
    if max_len is not None:
        lengths = np.minimum(lengths, max_len)
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64), lengths
    # row r of utterance k is starts[k] + (position within its run)
    run_starts = np.repeat(starts - np.concatenate([[0], np.cumsum(lengths)[:-1]]), lengths)
    return np.arange(total, dtype=np.int64) + run_starts, lengths


def pad(flat: np.ndarray, lengths: np.ndarray, max_len: int | None = None) -> np.ndarray:
    """(B, T_max, D) zero-padded array from concatenated rows and per-item lengths."""
    b = len(lengths)
    t = int(lengths.max(initial=0)) if max_len is None else max_len
    dim = flat.shape[1] if flat.ndim == 2 else 0
    out = np.zeros((b, t, dim), dtype=flat.dtype)
    if flat.shape[0]:
        item = np.repeat(np.arange(b), lengths)
        pos = np.arange(flat.shape[0]) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        keep = pos < t
        out[item[keep], pos[keep]] = flat[keep]
    return out


def coalesce(starts: Sequence[int] | np.ndarray, stops: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
    """(k, 2) runs [start, stop) covering exactly the given ranges, touching ones merged.

    `starts`/`stops` are sorted, non-overlapping half-open ranges (empty ones are dropped);
    `stops=None` takes single rows (`coalesce(rows)`: runs of consecutive row numbers). Runs
    never bridge a gap, so a read of each run fetches only what was asked for (not the rows
    of other splits in between, as one read from the first to the last wanted row would).
    """
    starts = np.asarray(starts, dtype=np.int64)
    stops = starts + 1 if stops is None else np.asarray(stops, dtype=np.int64)
    keep = stops > starts
    starts, stops = starts[keep], stops[keep]
    if len(starts) == 0:
        return np.zeros((0, 2), dtype=np.int64)
    # A run ends where the next range does not start at this one's stop.
    breaks = np.nonzero(starts[1:] != stops[:-1])[0] + 1
    return np.stack([starts[np.r_[0, breaks]], stops[np.r_[breaks - 1, len(stops) - 1]]], axis=1)


def gather_padded(
    values: np.ndarray, starts: np.ndarray, lengths: np.ndarray, width: int | None = None, dtype=None
) -> tuple[np.ndarray, np.ndarray]:
    """(B, width, D) zero-padded items values[starts[b] : starts[b] + lengths[b]] and their mask.

    One `np.take` over `values` for the whole batch (no per-item Python); padding positions
    take row 0 and are then zeroed, which costs less than a boolean scatter of the real rows.
    `width` defaults to the longest item (items longer than `width` are cut), `dtype` to
    values' own. (numpy's float16 -> float32 cast is unvectorised, ~15x slower than torch's;
    the loader keeps float16 here and casts in torch.)
    """
    starts = np.asarray(starts, dtype=np.int64)
    lengths = np.asarray(lengths, dtype=np.int64)
    width = int(lengths.max(initial=0)) if width is None else int(width)
    steps = np.arange(width, dtype=np.int64)
    mask = steps[None, :] < lengths[:, None]
    if not mask.any():
        return np.zeros((len(lengths), width, values.shape[1]), dtype=dtype or values.dtype), mask
    index = np.where(mask, starts[:, None] + steps[None, :], 0)
    out = np.take(values, index.reshape(-1), axis=0).reshape(len(lengths), width, values.shape[1])
    out[~mask] = 0
    return (out if dtype is None else out.astype(dtype, copy=False)), mask
