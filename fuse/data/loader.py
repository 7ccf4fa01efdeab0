"""The batch loader: a cache seen through a `DataSpec`, streamed as padded `Batch`es.

* **Truncation.** Each modality keeps at most its first `max_len` frames (defaults in
  `fuse.data.spec.DEFAULT_MAX_LEN`), so a 10k-frame COVAREP sequence costs no more than 1500
  frames. Head truncation keeps the start of the utterance, where the feature-extraction
  windows line up across modalities. Normalisation statistics and dialogue context use the
  same frames.
* **Streaming.** Utterances are read in blocks: contiguous utterance ranges of about
  `block_mb` MB of the largest feature set (never more than a shard; `spec.block_rows`),
  read with one zarr call per modality. An epoch shuffles the blocks, groups them into pools
  of `pool_blocks` blocks, shuffles the utterances of a pool, sorts them by length
  (bucketing: little padding), cuts them into batches and shuffles the batch order. A
  background thread prepares the next pool while the model trains on the current one (when
  a core is free for it, see `default_prefetch`). Memory is bounded by two pools however
  large the cache. `in_memory=True` keeps every prepared utterance after its first read; it
  walks the same blocks in the same order, so it yields exactly the same batches.
* **Batch order** depends only on (seed, epoch), never on global RNG state, so a resumed run
  sees the same batches as an uninterrupted one, and a FeatureData shared by many runs (a
  sweep) gives each the batches a fresh one would.
"""
from __future__ import annotations

import concurrent.futures
import math
import os
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import torch

from cache_schema import Cache, FeatureSet
from cache_schema.ragged import pad
from fuse.batch import MODALITIES, Batch, ModalityInput, future_key
from fuse.data.dialogue import context_rows, future_context_rows, utterance_means
from fuse.data.metadata import MetadataEncoding, default_metadata_columns
from fuse.data.normalisation import AUTO, MODES, Normaliser, resolve_mode
from fuse.data.selection import Splits, detect_task, dialogue_keys, resolve_splits, select_feature_sets, speaker_keys
from fuse.data.spec import DEFAULT_BLOCK_MB, DEFAULT_MAX_LEN, DEFAULT_POOL_BLOCKS, DataError, DataSpec, primary_feature_set, rows_per_block


@dataclass
class Pool:
    """Blocks read together, and the utterances of them to batch."""

    blocks: list[tuple[int, int]]
    utterances: np.ndarray


def default_prefetch() -> bool:
    """Read the next pool in a background thread only when a core is free for it.

    When torch's intra-op threads already occupy every core (CPU training on a small
    machine), a reader thread preempts them and their OpenMP barriers stall, which costs more
    than the reads themselves; reading in line is faster there. The training recipe also
    turns prefetching on when the model runs on CUDA, where the CPU threads are mostly idle.
    """
    return (os.cpu_count() or 1) > torch.get_num_threads()


class FeatureData:
    """A cache seen through a DataSpec: splits, labels, normalised features, batches.

    Build with `FeatureData.for_training` (fits normalisation and metadata on train) or
    `FeatureData.for_run` (uses a run's saved statistics, possibly on another cache).
    """

    def __init__(self, cache: Cache, spec: DataSpec, normaliser: Normaliser, metadata: MetadataEncoding, splits: Splits, in_memory: bool = False):
        self.cache, self.spec, self.normaliser, self.metadata, self.splits = cache, spec, normaliser, metadata, splits
        self.in_memory = in_memory
        self.normalisation_note = "as stored in the run"  # for_training says how `auto` resolved
        self.prefetch = default_prefetch()
        self.feature_sets: dict[str, FeatureSet] = {m: cache[name] for m, name in spec.feature_sets.items()}
        self.columns = {c: cache.column(c) for c in ("id", "split", "speaker", "dataset", "dialogue_id", "turn")}
        self.n = cache.n_utterances
        self._load_labels()
        for fs in self.feature_sets.values():
            if len(fs) != self.n:
                raise DataError(f"feature set {fs.name!r} describes {len(fs)} utterances but the table has {self.n}; re-run extraction")
        self.speakers = np.asarray(self.columns["speaker"], dtype=object).astype(str)
        meta_columns = {c: cache.column(c) for c in spec.metadata}
        meta_columns["id"] = self.columns["id"]
        self.metadata_categorical, self.metadata_numeric = metadata.encode(meta_columns)
        self._memory: dict[str, dict[int, np.ndarray | None]] = {m: {} for m in self.feature_sets}
        self._group_rows = {m: None for m in self.feature_sets}
        # Frames kept per modality; None in the spec keeps every frame.
        self.frame_limit = {m: np.iinfo(np.int64).max if spec.max_len[m] is None else int(spec.max_len[m]) for m in self.feature_sets}
        self._sort_length = sum(np.minimum(fs.lengths, self.frame_limit[m]) for m, fs in self.feature_sets.items())
        self.block_rows = rows_per_block(spec, self.feature_sets)
        self._blocks = list(primary_feature_set(self.feature_sets).iter_blocks(self.block_rows))
        self.context_index = None
        self.future_index = None
        self.context_means: dict[str, np.ndarray] = {}

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def for_training(
        cls,
        cache: Cache,
        requested: dict[str, str | None],
        *,
        task: str = "auto",
        max_len: dict[str, int] | None = None,
        normalisation: str = "auto",
        metadata: list[str] | None = None,
        context_turns: int = 0,
        context_future_turns: int | None = None,
        in_memory: bool = False,
        block_mb: float = DEFAULT_BLOCK_MB,
        pool_blocks: int = DEFAULT_POOL_BLOCKS,
        block_rows: int | None = None,
    ) -> "FeatureData":
        feature_sets = select_feature_sets(cache, requested)
        table_columns = {c: cache.column(c) for c in ("id", "split", "dataset", "dialogue_id", "speaker", "label", "labels_multi")}
        label_names, multi_names = cache.table.label_names, cache.table.labels_multi_names
        task = detect_task(label_names, table_columns["label"], multi_names, table_columns["labels_multi"], task)
        unknown = sorted(set(max_len or {}) - set(MODALITIES))
        if unknown:
            raise DataError(f"max_len: unknown modality {unknown[0]!r} (use text, audio or video)")
        if any(v is not None and int(v) < 1 for v in (max_len or {}).values()):
            raise DataError(f"max_len: lengths must be >= 1 (or None: every frame), got {max_len}")
        lengths = {**DEFAULT_MAX_LEN, **(max_len or {})}
        if metadata is None:
            metadata = default_metadata_columns(table_columns)
        splits = resolve_splits(table_columns["split"], dialogue_keys(table_columns), speakers=speaker_keys(table_columns))
        if normalisation != AUTO and normalisation not in MODES:
            raise DataError(f"normalisation {normalisation!r} is not one of {AUTO}, {', '.join(MODES)}")
        normalisation, normalisation_note = resolve_mode(normalisation, table_columns["speaker"], splits.train)
        spec = DataSpec(
            feature_sets=feature_sets,
            task=task,
            class_names=list(label_names if task == "single_label" else multi_names),
            max_len={m: None if lengths[m] is None else int(lengths[m]) for m in feature_sets},
            normalisation=normalisation,
            metadata=list(metadata),
            context_turns=int(context_turns),
            context_future_turns=None if context_future_turns is None else int(context_future_turns),
            block_mb=block_mb,
            pool_blocks=pool_blocks,
            block_rows=block_rows,
        )
        available = set(cache.root["utterances"].array_keys())
        unknown = [c for c in metadata if c not in available]
        if unknown:
            usable = sorted(available - {"id", "split", "text", "label", "labels_multi", "start", "end"})
            raise DataError(f"no metadata column {unknown[0]!r} in the utterance table (usable columns: {', '.join(usable)})")
        encoding = MetadataEncoding.fit({c: cache.column(c) for c in metadata}, splits.train, list(metadata))
        sets = {name: cache[name] for name in feature_sets.values()}
        by_name = {name: spec.max_len[m] for m, name in feature_sets.items()}
        try:
            normaliser = Normaliser.fit(normalisation, sets, splits.train, table_columns["speaker"], by_name, rows_per_block(spec, sets))
        except ValueError as exc:
            raise DataError(str(exc)) from None
        data = cls(cache, spec, normaliser, encoding, splits, in_memory=in_memory)
        data.normalisation_note = normalisation_note
        data.prepare()
        return data

    @classmethod
    def for_run(cls, cache: Cache, spec: DataSpec, normaliser: Normaliser, metadata: MetadataEncoding, in_memory: bool = False) -> "FeatureData":
        """Data for evaluating a trained run (statistics come from the run, not this cache)."""
        missing = [f"{m}: {name}" for m, name in spec.feature_sets.items() if name not in cache]
        if missing:
            raise DataError(
                f"{cache.path}: lacks the run's feature set(s) {', '.join(missing)} (available: {', '.join(cache.feature_names()) or 'none'})"
            )
        table_columns = {c: cache.column(c) for c in ("split", "dataset", "dialogue_id", "speaker")}
        splits = resolve_splits(table_columns["split"], dialogue_keys(table_columns), speakers=speaker_keys(table_columns))
        names = cache.table.label_names if spec.task == "single_label" else cache.table.labels_multi_names
        if list(names) and list(names) != list(spec.class_names):
            raise DataError(f"{cache.path}: classes {list(names)} differ from the run's {spec.class_names}")
        data = cls(cache, spec, normaliser, metadata, splits, in_memory=in_memory)
        data.prepare()
        return data

    def prepare(self) -> None:
        """Statistics that depend on the cache at hand: unseen speakers, dialogue context."""
        rows = np.arange(self.n)
        by_name = {self.spec.feature_sets[m]: self.spec.max_len[m] for m in self.feature_sets}
        sets = {fs.name: fs for fs in self.feature_sets.values()}
        self.normaliser.prepare(sets, rows, self.speakers, by_name, self.block_rows)
        self._group_rows = {m: self.normaliser.group_rows(fs.name, self.speakers) for m, fs in self.feature_sets.items()}
        if self.spec.context_turns > 0:
            keys = dialogue_keys({c: self.columns[c] for c in ("dataset", "split", "dialogue_id")})
            turns = np.asarray(self.columns["turn"], dtype=np.int64)
            self.context_index = context_rows(keys, turns, self.spec.context_turns)
            self.future_index = future_context_rows(keys, turns, self.spec.n_future_turns)
            window = np.concatenate([self.context_index[rows], self.future_index[rows]], axis=1)
            needed = np.unique(window[window >= 0])
            for m, fs in self.feature_sets.items():
                raw = utterance_means(fs, needed, self.spec.max_len[m], self.block_rows)
                norm = self.normaliser.norms.get(fs.name)
                if norm is not None and self.normaliser.mode != "none":
                    raw = norm.standardise(raw, self._group_rows[m])
                    raw[~fs.present] = 0.0
                self.context_means[m] = raw.astype(np.float32)

    def _load_labels(self) -> None:
        if self.spec.task == "single_label":
            self.labels = np.asarray(self.cache.column("label"), dtype=np.int64)
            self.labelled = self.labels >= 0
        else:
            intensities = np.asarray(self.cache.column("labels_multi"), dtype=np.float32)
            if intensities.ndim != 2 or intensities.shape[1] != len(self.spec.class_names):
                intensities = np.full((self.n, len(self.spec.class_names)), np.nan, dtype=np.float32)
            self.labelled = ~np.isnan(intensities).any(axis=1)
            self.labels = (np.nan_to_num(intensities, nan=0.0) > 0).astype(np.float32)

    # -- public views -------------------------------------------------------------------------
    @property
    def input_dims(self) -> dict[str, int]:
        return {m: fs.dim for m, fs in self.feature_sets.items()}

    @property
    def n_classes(self) -> int:
        return len(self.spec.class_names)

    def indices(self, split: str, labelled: bool = True) -> np.ndarray:
        rows = self.splits.get(split)
        return rows[self.labelled[rows]] if labelled else rows

    def rows_of_ids(self, ids: list[str]) -> np.ndarray:
        lookup = {str(u): i for i, u in enumerate(self.columns["id"])}
        missing = [u for u in ids if u not in lookup]
        if missing:
            raise DataError(f"{self.cache.path}: no utterance with id {', '.join(map(repr, missing[:5]))}")
        return np.asarray([lookup[u] for u in ids], dtype=np.int64)

    # -- batching -----------------------------------------------------------------------------
    def plan(self, indices: np.ndarray, shuffle: bool, seed: int = 0, epoch: int = 0) -> tuple[list[Pool], np.random.Generator | None]:
        wanted = np.zeros(self.n, dtype=bool)
        wanted[np.asarray(indices, dtype=np.int64)] = True
        blocks = [b for b in self._blocks if wanted[b[0] : b[1]].any()]
        rng = np.random.default_rng([int(seed), int(epoch)]) if shuffle else None
        if rng is not None:
            blocks = [blocks[i] for i in rng.permutation(len(blocks))]
        pools = []
        for i in range(0, len(blocks), self.spec.pool_blocks):
            group = blocks[i : i + self.spec.pool_blocks]
            utts = np.concatenate([start + np.nonzero(wanted[start:stop])[0] for start, stop in group])
            pools.append(Pool(group, utts))
        return pools, rng

    def n_batches(self, indices: np.ndarray, batch_size: int, shuffle: bool = False, seed: int = 0, epoch: int = 0, drop_last: bool = False) -> int:
        pools, _ = self.plan(indices, shuffle, seed, epoch)
        count = (lambda n: n // batch_size) if drop_last else (lambda n: math.ceil(n / batch_size))
        return sum(count(len(p.utterances)) for p in pools)

    def batches(
        self,
        indices: np.ndarray,
        batch_size: int,
        *,
        shuffle: bool = False,
        seed: int = 0,
        epoch: int = 0,
        bucket: bool | None = None,
        with_labels: bool = True,
        drop_last: bool = False,
        shard: tuple[int, int] | None = None,
    ) -> Iterator[Batch]:
        """Batches over `indices`: each utterance exactly once. See the module docstring.

        shuffle=False walks blocks and utterances in cache order; `bucket` (default: same as
        shuffle) sorts each pool by length before cutting it into batches. `drop_last` leaves
        out each pool's remainder (len % batch_size utterances, drawn from the shuffled order
        before bucketing, so the dropped ones are random, not the longest), as a DataLoader's
        drop_last does for one pool.

        `shard=(rank, world_size)` (distributed training, `fuse.training.distributed`): the same
        plan of batches on every rank, each rank reading and yielding only its part of each
        batch (utterances rank, rank + world_size, ...), which is empty when a batch has fewer
        utterances than ranks.
        """
        bucket = shuffle if bucket is None else bucket
        pools, rng = self.plan(indices, shuffle, seed, epoch)
        # Random draws happen here, in a fixed order, so prefetching cannot change them.
        orders = [self._pool_order(p, batch_size, rng, bucket, drop_last) for p in pools]
        if shard is not None:
            rank, world_size = shard
            orders = [[utts[rank::world_size] for utts in order] for order in orders]
            pools = [Pool(p.blocks, np.sort(np.concatenate([*order, np.zeros(0, dtype=np.int64)]))) for p, order in zip(pools, orders)]
        if not self.prefetch or len(pools) < 2:
            for pool, order in zip(pools, orders):
                yield from self._pool_batches(self._read_pool(pool), order, with_labels)
            return
        # The reader thread prepares the next pool's arrays; batches are padded here, one at a
        # time, so at most two pools of arrays and one padded batch are alive at once.
        with concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="fuse-prefetch") as pool_reader:
            future = pool_reader.submit(self._read_pool, pools[0])
            for k in range(len(pools)):
                arrays = future.result()
                if k + 1 < len(pools):
                    future = pool_reader.submit(self._read_pool, pools[k + 1])
                yield from self._pool_batches(arrays, orders[k], with_labels)
                del arrays

    def _pool_order(self, pool: Pool, batch_size: int, rng, bucket: bool, drop_last: bool = False) -> list[np.ndarray]:
        utts = pool.utterances
        if rng is not None:
            utts = utts[rng.permutation(len(utts))]
        if drop_last:
            utts = utts[: len(utts) - len(utts) % batch_size]
        if bucket:
            utts = utts[np.argsort(self._sort_length[utts], kind="stable")]
        batches = [utts[i : i + batch_size] for i in range(0, len(utts), batch_size)]
        if rng is not None:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        return batches

    def _pool_batches(self, arrays, order: list[np.ndarray], with_labels: bool) -> Iterator[Batch]:
        for utts in order:
            yield self.make_batch(utts, {m: [arrays[m][int(u)] for u in utts] for m in self.feature_sets}, with_labels)

    def _read_pool(self, pool: Pool) -> dict[str, dict[int, np.ndarray | None]]:
        """Normalised, truncated float32 arrays (None when missing) of the pool's utterances."""
        out: dict[str, dict[int, np.ndarray | None]] = {m: {} for m in self.feature_sets}
        for start, stop in pool.blocks:
            local = pool.utterances[(pool.utterances >= start) & (pool.utterances < stop)]
            for m in self.feature_sets:
                memory = self._memory[m]
                if self.in_memory and all(int(u) in memory for u in local):
                    for u in local:
                        out[m][int(u)] = memory[int(u)]
                    continue
                read = self.read_utterances(m, local)
                out[m].update(read)
                if self.in_memory:
                    memory.update(read)
        return out

    def read_utterances(self, modality: str, rows: np.ndarray) -> dict[int, np.ndarray | None]:
        """Read sorted `rows` (within one block) with one contiguous zarr call; normalise them."""
        fs = self.feature_sets[modality]
        result: dict[int, np.ndarray | None] = {}
        present_rows = rows[fs.present[rows]]
        for u in rows[~fs.present[rows]]:
            result[int(u)] = None
        if len(present_rows) == 0:
            return result
        first, last = int(present_rows[0]), int(present_rows[-1]) + 1
        values, offsets = fs.block(first, last)
        cap = self.frame_limit[modality]
        group_rows = self._group_rows[modality]
        for u in present_rows:
            lo = int(offsets[u - first])
            hi = min(int(offsets[u - first + 1]), lo + cap)
            result[int(u)] = self.normaliser.apply(fs.name, values[lo:hi], int(group_rows[u]))
        return result

    def batch_for_rows(self, rows: np.ndarray, with_labels: bool = False) -> Batch:
        """A batch of arbitrary rows (e.g. one utterance for `fuse explain`), read row by row."""
        rows = np.asarray(rows, dtype=np.int64)
        arrays = {m: [self.read_utterances(m, rows[i : i + 1])[int(rows[i])] for i in range(len(rows))] for m in self.feature_sets}
        return self.make_batch(rows, arrays, with_labels)

    def make_batch(self, utts: np.ndarray, arrays: dict[str, list[np.ndarray | None]], with_labels: bool = True) -> Batch:
        """Pad each modality's arrays (None: missing) into a Batch (`cache_schema.ragged.pad`)."""
        modalities = {}
        for m, items in arrays.items():
            dim = self.feature_sets[m].dim
            lengths = np.array([0 if a is None else len(a) for a in items], dtype=np.int64)
            real = [a for a in items if a is not None and len(a)]
            flat = np.concatenate(real).astype(np.float32, copy=False) if real else np.zeros((0, dim), dtype=np.float32)
            width = max(1, int(lengths.max(initial=0)))
            values = pad(flat, lengths, width)
            mask = np.arange(width)[None, :] < lengths[:, None]
            present = np.array([a is not None for a in items], dtype=bool)
            modalities[m] = ModalityInput(torch.from_numpy(values), torch.from_numpy(mask), torch.from_numpy(present))
        batch = Batch(modalities=modalities, index=torch.from_numpy(np.asarray(utts, dtype=np.int64)))
        if with_labels:
            if not self.labelled[utts].all():
                raise DataError(f"rows {utts[~self.labelled[utts]][:5].tolist()} have no label but a labelled batch was asked for")
            if self.spec.task == "single_label":
                batch.label = torch.from_numpy(self.labels[utts])
            else:
                batch.labels_multi = torch.from_numpy(self.labels[utts])
        if self.metadata_categorical is not None:
            batch.metadata_categorical = torch.from_numpy(self.metadata_categorical[utts])
        if self.metadata_numeric is not None:
            batch.metadata_numeric = torch.from_numpy(self.metadata_numeric[utts])
        if self.context_index is not None:
            batch.context = {m: self._turn_inputs(self.context_index[utts], m) for m in self.feature_sets}
            if self.future_index is not None and self.future_index.shape[1] > 0:
                batch.context.update({future_key(m): self._turn_inputs(self.future_index[utts], m) for m in self.feature_sets})
        return batch

    def _turn_inputs(self, rows: np.ndarray, modality: str) -> ModalityInput:
        """Utterance-level features of the turns `rows` (B, K; -1 = none), trimmed to used columns.

        Past windows are left-padded and future ones right-padded: either way the columns no
        row uses are dropped (at least one column is kept).
        """
        used = rows >= 0
        columns = np.nonzero(used.any(axis=0))[0]
        lo, hi = (int(columns[0]), int(columns[-1]) + 1) if len(columns) else (0, 1)
        rows, used = rows[:, lo:hi], used[:, lo:hi]
        safe = np.where(used, rows, 0)
        mask = used & self.feature_sets[modality].present[safe]
        values = self.context_means[modality][safe] * mask[..., None]
        return ModalityInput(torch.from_numpy(values.astype(np.float32)), torch.from_numpy(mask), torch.from_numpy(mask.any(axis=1)))

    # -- record -------------------------------------------------------------------------------
    def summary(self) -> dict[str, Any]:
        counts = {s: int(len(self.indices(s))) for s in ("train", "dev", "test")}
        return {
            "cache": str(self.cache.path),
            "feature_sets": dict(self.spec.feature_sets),
            "task": self.spec.task,
            "classes": list(self.spec.class_names),
            "labelled_utterances": counts,
            "dev_split": self.splits.note,
            "ignored_splits": self.splits.ignored,
            "normalisation": self.normaliser.mode,
            "normalisation_note": self.normalisation_note,
            "metadata": list(self.spec.metadata),
            "max_len": dict(self.spec.max_len),
            "truncated_utterances": {m: int((fs.lengths > self.frame_limit[m]).sum()) for m, fs in self.feature_sets.items()},
            "missing": {m: int((~fs.present).sum()) for m, fs in self.feature_sets.items()},
            "context_turns": self.spec.context_turns,
            "context_future_turns": self.spec.n_future_turns,
            "blocks": len(self._blocks),
        }

