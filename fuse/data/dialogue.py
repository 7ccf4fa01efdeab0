"""Dialogue context: which turns surround each utterance, and their utterance-level features.

For models that read it, `Batch.context[modality]` holds the mean-pooled normalised features
of up to `context_turns` preceding turns of the same dialogue (ordered by `turn`, then row)
and the current utterance last, left-padded so the current utterance is always at position
-1. `Batch.context[future_key(modality)]` holds up to `context_future_turns` following turns,
right-padded, the next turn first. Models read those only when asked to (the `context`
model's `context_window="both"`, as bidirectional ERC models such as BiDialogueRNN,
DialogueGCN and COSMIC read the whole dialogue for offline evaluation). Dialogues are keyed
by (dataset, split, dialogue_id) (`fuse.data.selection.dialogue_keys`).
"""
from __future__ import annotations

import numpy as np

from cache_schema import FeatureSet
from cache_schema.ragged import rows_for


def dialogue_neighbours(keys: np.ndarray, turns: np.ndarray, offsets: range) -> np.ndarray:
    """(N, len(offsets)) rows of the turn `offset` places away in the same dialogue, else -1.

    Offset -1 is the previous turn, +1 the next one. Order within a dialogue is by `turn`,
    ties (and unknown turns, -1) by row order; rows without a dialogue have no neighbours.
    """
    offsets = list(offsets)
    out = np.full((len(keys), len(offsets)), -1, dtype=np.int64)
    has = np.nonzero(keys != "")[0]
    if len(has) == 0 or not offsets:
        return out
    order = has[np.lexsort((has, turns[has], keys[has]))]
    sorted_keys = keys[order]
    dialogue = np.concatenate([[0], np.cumsum(sorted_keys[1:] != sorted_keys[:-1])])
    for column, offset in enumerate(offsets):
        source = np.arange(len(order)) + offset
        valid = (source >= 0) & (source < len(order))
        valid[valid] = dialogue[source[valid]] == dialogue[valid]
        out[order[valid], column] = order[source[valid]]
    return out


def context_rows(keys: np.ndarray, turns: np.ndarray, n_preceding: int) -> np.ndarray:
    """(N, n_preceding + 1): the preceding turns (left-padded with -1), then the row itself."""
    out = dialogue_neighbours(keys, turns, range(-n_preceding, 1))
    out[:, -1] = np.arange(len(keys))
    return out


def future_context_rows(keys: np.ndarray, turns: np.ndarray, n_following: int) -> np.ndarray:
    """(N, n_following): the next turns of the same dialogue, right-padded with -1."""
    return dialogue_neighbours(keys, turns, range(1, max(0, n_following) + 1))


def utterance_means(fs: FeatureSet, rows: np.ndarray, max_len: int | None, block_rows: int | None) -> np.ndarray:
    """(N, D) float32 mean over the first `max_len` frames of each of `rows` (0 elsewhere), streamed."""
    means = np.zeros((len(fs), fs.dim), dtype=np.float32)
    wanted = np.zeros(len(fs), dtype=bool)
    wanted[rows] = True
    wanted &= fs.present
    for start, stop in fs.iter_blocks(block_rows):
        local = np.nonzero(wanted[start:stop])[0]
        if len(local) == 0:
            continue
        first, last = start + int(local[0]), start + int(local[-1]) + 1
        values, offsets = fs.block(first, last)
        take, lengths = rows_for(offsets, local + start - first, max_len)
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        sums = np.add.reduceat(values[take].astype(np.float64), starts, axis=0)
        means[local + start] = sums / lengths[:, None]
    return means
