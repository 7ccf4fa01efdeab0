"""The batch loader: a cache seen through a `DataSpec`, streamed as padded `Batch`es.

* **Truncation.** Each modality keeps at most its first `max_len` frames (defaults in
  `fuse.data.spec.DEFAULT_MAX_LEN`), so a 10k-frame COVAREP sequence costs no more than 1500
  frames. Head truncation keeps the start of the utterance, where the feature-extraction
  windows line up across modalities. Normalisation statistics and dialogue context use the
  same frames.
* **Streaming.** Utterances are grouped in blocks: contiguous utterance ranges of about
  `block_mb` MB of the largest feature set (never more than a shard; `spec.block_rows`).
  An epoch shuffles the blocks, groups them into pools of `pool_blocks` blocks, shuffles the
  utterances of a pool, sorts them by length (bucketing: little padding), cuts them into
  batches and shuffles the batch order (`plan`). A pool is read as contiguous runs of only
  the wanted frames (`cache_schema.ragged.coalesce`: a run never spans another split's rows
  nor the truncated tail of an utterance), kept as stored (float16), one read per run and
  modality. Each batch is then built without per-utterance Python: one fancy-index gather
  pads it (`gather_padded`, casting to float32 in the same copy) and one broadcast pass
  standardises it (`Normaliser.apply_padded`). A background thread builds the next batches
  while the model trains on the current one (`fuse.data.readahead`; when a core is free for
  it, see `default_prefetch`), pinning them for CUDA when asked, and a second one reads the
  next pool meanwhile. Memory is bounded by three pools of raw frames plus a few batches
  (one pool when reading in line), however large the cache.
* **In memory.** `in_memory=True` reads each feature set whole once, as stored
  (`FeatureSet.in_ram`: float16 stays float16, one copy per opened cache, so all of a sweep's
  runs in a process share it) and builds batches from it exactly as from a streamed pool, so
  it yields exactly the same batches.
* **Batch order** depends only on (seed, epoch), never on global RNG state, so a resumed run
  sees the same batches as an uninterrupted one, and a FeatureData shared by many runs (a
  sweep) gives each the batches a fresh one would.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import torch

from cache_schema import Cache, FeatureSet
from cache_schema.ragged import coalesce, gather_padded
from fuse.batch import MODALITIES, Batch, ModalityInput, future_key
from fuse.data.dialogue import context_rows, future_context_rows, utterance_means
from fuse.data.metadata import MetadataEncoding, default_metadata_columns
from fuse.data.normalisation import AUTO, MODES, Normaliser, resolve_mode
from fuse.data.readahead import read_ahead
from fuse.data.selection import Splits, detect_task, dialogue_keys, resolve_splits, select_feature_sets, speaker_keys
from fuse.data.spec import DEFAULT_BLOCK_MB, DEFAULT_MAX_LEN, DEFAULT_POOL_BLOCKS, DataError, DataSpec, primary_feature_set, rows_per_block


READ_AHEAD_BATCHES = 2  # batches the read-ahead thread may hold finished (fuse.data.readahead)


@dataclass
class Pool:
    """Blocks read together: the rows to read from them and the batches cut from those rows."""

    blocks: list[tuple[int, int]]
    rows: np.ndarray  # sorted; with `shard`, only this rank's
    batches: list[np.ndarray]  # rows of each batch, in the order yielded


@dataclass
class Frames:
    """Frames of some rows as stored (e.g. float16): row rows[i]'s kept frames are
    values[starts[i] : starts[i] + lengths[i]]. rows=None: every row, row i at position i."""

    values: np.ndarray
    rows: np.ndarray | None
    starts: np.ndarray
    lengths: np.ndarray

    def locate(self, utts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(starts, lengths) of rows `utts` (each one of `rows`)."""
        at = utts if self.rows is None else np.searchsorted(self.rows, utts)
        return self.starts[at], self.lengths[at]


def default_prefetch() -> bool:
    """Build batches ahead in a background thread only when a core is free for it.

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

    def __init__(
        self, cache: Cache, spec: DataSpec, normaliser: Normaliser, metadata: MetadataEncoding, splits: Splits, in_memory: bool = False, columns: dict[str, np.ndarray] | None = None
    ):
        """`columns`: table columns the caller already read (not read twice: a table's string
        columns are the part of a run's memory that grows with the corpus)."""
        self.cache, self.spec, self.normaliser, self.metadata, self.splits = cache, spec, normaliser, metadata, splits
        self.in_memory = in_memory
        self.normalisation_note = "as stored in the run"  # for_training says how `auto` resolved
        self.prefetch = default_prefetch()
        self.feature_sets: dict[str, FeatureSet] = {m: cache[name] for m, name in spec.feature_sets.items()}
        known = columns or {}
        self.columns = {c: known[c] if c in known else cache.column(c) for c in ("id", "split", "speaker", "dataset", "dialogue_id", "turn")}
        self.n = cache.n_utterances
        self._load_labels()
        for fs in self.feature_sets.values():
            if len(fs) != self.n:
                raise DataError(f"feature set {fs.name!r} describes {len(fs)} utterances but the table has {self.n}; re-run extraction")
        self.speakers = np.asarray(self.columns["speaker"], dtype=object).astype(str)
        meta_columns = {c: cache.column(c) for c in spec.metadata}
        meta_columns["id"] = self.columns["id"]
        self.metadata_categorical, self.metadata_numeric = metadata.encode(meta_columns)
        self._group_rows = {m: None for m in self.feature_sets}
        self._resident: dict[str, Frames] | None = None  # in_memory: built on first use
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
        label_names, multi_names = cache.label_names, cache.labels_multi_names
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
        data = cls(cache, spec, normaliser, encoding, splits, in_memory=in_memory, columns=table_columns)
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
        names = cache.label_names if spec.task == "single_label" else cache.labels_multi_names
        if list(names) and list(names) != list(spec.class_names):
            raise DataError(f"{cache.path}: classes {list(names)} differ from the run's {spec.class_names}")
        data = cls(cache, spec, normaliser, metadata, splits, in_memory=in_memory, columns=table_columns)
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
    def plan(
        self,
        indices: np.ndarray,
        batch_size: int,
        *,
        shuffle: bool = False,
        seed: int = 0,
        epoch: int = 0,
        bucket: bool | None = None,
        drop_last: bool = False,
        shard: tuple[int, int] | None = None,
    ) -> list[Pool]:
        """The pools of an epoch over `indices`, each with its batches in the order yielded.

        Every random draw happens here, in a fixed order from (seed, epoch), so how the batches
        are then read (streamed, from memory, ahead in a thread) cannot change them. See
        `batches` for the arguments.
        """
        bucket = shuffle if bucket is None else bucket
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
            order = self._pool_order(utts, batch_size, rng, bucket, drop_last)
            if shard is not None:  # this rank's part of each global batch (fuse.training.distributed)
                rank, world_size = shard
                order = [utts[rank::world_size] for utts in order]
            rows = np.sort(np.concatenate([*order, np.zeros(0, dtype=np.int64)]))
            pools.append(Pool(group, rows, order))
        return pools

    def n_batches(self, indices: np.ndarray, batch_size: int, shuffle: bool = False, seed: int = 0, epoch: int = 0, drop_last: bool = False) -> int:
        return sum(len(p.batches) for p in self.plan(indices, batch_size, shuffle=shuffle, seed=seed, epoch=epoch, drop_last=drop_last))

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
        pin_memory: bool = False,
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

        `pin_memory`: batches in page-locked memory (for CUDA; pinned by the read-ahead thread
        when there is one), so `batch.to(device, non_blocking=True)` overlaps the copy.
        """
        pools = self.plan(indices, batch_size, shuffle=shuffle, seed=seed, epoch=epoch, bucket=bucket, drop_last=drop_last, shard=shard)
        ahead = self.prefetch and sum(len(p.batches) for p in pools) > 1
        stream = self._stream(pools, with_labels, pin_memory, ahead)
        yield from read_ahead(stream, READ_AHEAD_BATCHES, name="fuse-read-ahead") if ahead else stream

    def _stream(self, pools: list[Pool], with_labels: bool, pin_memory: bool, ahead: bool) -> Iterator[Batch]:
        """Each pool's batches, assembled one by one from the pool's frames.

        With `ahead`, a second thread reads the next pool while this one's batches are built
        (reads wait on the disk, assembly on memory bandwidth: a cold page cache is then hidden
        behind compute too); at most three pools of raw frames are alive (the one being
        assembled, one read and waiting, one being read), plus the batches waiting in read-ahead.
        """
        frames = self._pool_frames(pools)
        if ahead and not self.in_memory and len(pools) > 1:
            frames = read_ahead(frames, 1, name="fuse-read-pools")
        try:
            for pool, arrays in frames:
                for utts in pool.batches:
                    batch = self._assemble(utts, arrays, with_labels)
                    yield batch.pin_memory() if pin_memory else batch
                del arrays
        finally:
            frames.close()  # stops the pool reader now, not when the generator is collected

    def _pool_frames(self, pools: list[Pool]) -> Iterator[tuple[Pool, dict[str, Frames]]]:
        for pool in pools:
            yield pool, self._memory_frames() if self.in_memory else {m: self._read_frames(m, pool.rows) for m in self.feature_sets}

    def _pool_order(self, utts: np.ndarray, batch_size: int, rng, bucket: bool, drop_last: bool = False) -> list[np.ndarray]:
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

    def _kept_lengths(self, modality: str, rows: np.ndarray) -> np.ndarray:
        """Frames a model sees of each row: the first `max_len`, none when missing."""
        fs = self.feature_sets[modality]
        lengths = np.minimum(fs.offsets[rows + 1] - fs.offsets[rows], self.frame_limit[modality])
        return np.where(fs.present[rows], lengths, 0)

    def _read_frames(self, modality: str, rows: np.ndarray) -> Frames:
        """The kept frames of sorted `rows`, as stored: one contiguous read per run of wanted
        frames (`cache_schema.ragged.coalesce`), never the frames between two runs."""
        fs = self.feature_sets[modality]
        lengths = self._kept_lengths(modality, rows)
        starts = fs.offsets[rows]
        runs = coalesce(starts, starts + lengths)
        parts = [fs.block_rows(int(lo), int(hi)) for lo, hi in runs]
        if len(parts) == 1:
            values = parts[0]
        else:
            values = np.concatenate(parts) if parts else np.zeros((0, fs.dim), dtype=fs.values.dtype)
        positions = np.zeros(len(rows), dtype=np.int64)  # each row's first frame within `values`
        np.cumsum(lengths[:-1], out=positions[1:])
        return Frames(values, rows, positions, lengths)

    def _memory_frames(self) -> dict[str, Frames]:
        """`in_memory`: every feature set whole, as stored (`FeatureSet.in_ram`: one copy per
        opened cache, shared by every FeatureData on it, e.g. all the runs of a sweep)."""
        if self._resident is None:
            rows = np.arange(self.n)
            self._resident = {m: Frames(fs.in_ram(), None, fs.offsets[:-1], self._kept_lengths(m, rows)) for m, fs in self.feature_sets.items()}
        return self._resident

    def _modality_input(self, modality: str, utts: np.ndarray, frames: Frames) -> ModalityInput:
        """One modality of a batch: padded in one gather, standardised in one broadcast pass."""
        fs = self.feature_sets[modality]
        starts, lengths = frames.locate(utts)
        padded, mask = gather_padded(frames.values, starts, lengths, max(1, int(lengths.max(initial=0))))
        mask = torch.from_numpy(mask)
        values = torch.from_numpy(padded).float()  # torch's float16 -> float32 cast is vectorised, numpy's is not
        values = self.normaliser.apply_padded(fs.name, values, mask, self._group_rows[modality][utts])
        return ModalityInput(values, mask, torch.from_numpy(fs.present[utts]))

    def batch_for_rows(self, rows: np.ndarray, with_labels: bool = False) -> Batch:
        """A batch of arbitrary rows, in the given order (e.g. one utterance for `fuse explain`)."""
        rows = np.asarray(rows, dtype=np.int64)
        unique = np.unique(rows)
        frames = self._memory_frames() if self.in_memory else {m: self._read_frames(m, unique) for m in self.feature_sets}
        return self._assemble(rows, frames, with_labels)

    def _assemble(self, utts: np.ndarray, frames: dict[str, Frames], with_labels: bool = True) -> Batch:
        """The Batch of rows `utts` from their read frames, plus labels, metadata and context."""
        modalities = {m: self._modality_input(m, utts, frames[m]) for m in self.feature_sets}
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

