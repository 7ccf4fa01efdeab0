"""The data layer: turns rows of a feature cache into padded `Batch`es for the fusion models.

What it decides, and why:

* **Feature sets.** One feature set per modality (`--text/--audio/--video NAME`, or `none`).
  When a modality is not named and the cache holds exactly one set of that modality it is
  used; several raise an error listing them. A set's modality is its `modality` attribute,
  else the part of its name before the first dot (`audio.wav2vec2-base` -> audio).
* **Splits.** `train`, `dev` (also spelled `valid`, `val`, `validation`) and `test`. Without a
  dev split, a deterministic 10% of the training dialogues (utterances, when there are no
  dialogues) becomes dev. The carve uses a fixed seed, not the run's seed, so every seed of an
  experiment sees the same split; the run records and prints it.
* **Task.** single_label when the table has `label_names` and some labels >= 0; multi_label
  when it has `labels_multi_names` (presence = intensity > 0, as CMU-MOSEI defines it). A row
  is labelled when its label is >= 0 (single) or none of its intensities is NaN (multi);
  unlabelled rows are left out of training and scoring but can still be predicted.
* **Truncation.** Each modality keeps at most its first `max_len` frames (defaults in
  DEFAULT_MAX_LEN), so a 10k-frame COVAREP sequence costs no more than 1500 frames. Head
  truncation keeps the start of the utterance, where the feature-extraction windows line up
  across modalities. Normalisation statistics and dialogue context use the same frames.
* **Streaming.** Utterances are read in blocks: contiguous utterance ranges of about
  `block_mb` MB of the largest feature set (never more than a shard), read with one zarr call
  per modality. An epoch shuffles the blocks, groups them into pools of `pool_blocks`
  blocks, shuffles the utterances of a pool, sorts them by length (bucketing: little padding),
  cuts them into batches and shuffles the batch order. A background thread prepares the next
  pool while the model trains on the current one (when a core is free for it, see
  `default_prefetch`). Memory is bounded by two pools however large the cache.
  `in_memory=True` keeps every prepared utterance after its first read; it walks
  the same blocks in the same order, so it yields exactly the same batches as streaming.
* **Batch order** depends only on (seed, epoch), never on global RNG state, so a resumed run
  sees the same batches as an uninterrupted one.
* **Metadata.** Categorical columns (strings) get a vocabulary from the training rows, 1..V,
  with 0 for unknown/empty values; numeric columns are standardised with training mean/std,
  missing values become 0 (the mean). Default: `speaker`, when that column is non-empty.
* **Dialogue context.** For models that read it, `Batch.context[modality]` holds the
  mean-pooled normalised features of up to `context_turns` preceding turns of the same
  dialogue (ordered by `turn`, then row) and the current utterance last, left-padded so the
  current utterance is always at position -1. Dialogues are keyed by (dataset, split,
  dialogue_id) because corpora such as MELD reuse dialogue ids across splits.
  `Batch.context[future_key(modality)]` (e.g. "text_future") holds the following turns: up
  to `context_future_turns` (default: as many as `context_turns`) next turns of the same
  dialogue, right-padded, the next turn first. Models read them only when asked to (the
  `context` model's `context_window="both"`, as bidirectional ERC models such as
  BiDialogueRNN, DialogueGCN and COSMIC read the whole dialogue for offline evaluation).
"""
from __future__ import annotations

import concurrent.futures
import math
import os
from dataclasses import asdict, dataclass, field
from typing import Any, Iterator

import numpy as np
import torch

from cache_schema import Cache, CacheError, FeatureSet
from fuse.batch import MODALITIES, Batch, ModalityInput
from fuse.normalisation import AUTO, MODES, Normaliser, resolve_mode, truncated_rows

DEFAULT_MAX_LEN = {"text": 512, "audio": 1500, "video": 1500}
DEV_NAMES = ("dev", "valid", "val", "validation")
CARVE_FRACTION = 0.1
CARVE_SEED = 20240601  # fixed: the carved dev split must not change with --seed
DEFAULT_BLOCK_MB = 16.0
TASKS = ("single_label", "multi_label")
FUTURE_SUFFIX = "_future"  # Batch.context key suffix of the following turns


class DataError(ValueError):
    """A problem with the data a user asked for; the message is meant to be shown as is."""


# ---------------------------------------------------------------------------------------------
# Feature sets, splits, task
# ---------------------------------------------------------------------------------------------


def modality_of(fs: FeatureSet) -> str:
    modality = fs.attrs.get("modality")
    if modality in MODALITIES:
        return modality
    prefix = fs.name.split(".", 1)[0]
    return prefix if prefix in MODALITIES else "other"


def feature_sets_by_modality(cache: Cache) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {m: [] for m in MODALITIES}
    for name, fs in cache.feature_sets().items():
        modality = modality_of(fs)
        if modality in found:
            found[modality].append(name)
    return found


def select_feature_sets(cache: Cache, requested: dict[str, str | None]) -> dict[str, str]:
    """modality -> feature-set name. `requested[m]` is a name, "none", or None (= choose)."""
    available = feature_sets_by_modality(cache)
    chosen: dict[str, str] = {}
    for modality in MODALITIES:
        want = requested.get(modality)
        if want is not None and want.lower() == "none":
            continue
        if want is None:
            names = available[modality]
            if len(names) == 1:
                chosen[modality] = names[0]
            elif len(names) > 1:
                raise DataError(
                    f"{cache.path}: {len(names)} {modality} feature sets, choose one with --{modality} "
                    f"({', '.join(names)}), or --{modality} none"
                )
            continue
        if want not in cache:
            listing = "; ".join(f"{m}: {', '.join(v)}" for m, v in available.items() if v) or "none"
            raise DataError(f"{cache.path}: no feature set {want!r} for --{modality} (available: {listing})")
        actual = modality_of(cache[want])
        if actual != modality:
            raise DataError(f"feature set {want!r} holds {actual} features, not {modality} (given with --{modality})")
        chosen[modality] = want
    if not chosen:
        raise DataError(f"{cache.path}: no feature sets selected (the cache has: {', '.join(cache.feature_names()) or 'none'})")
    return chosen


@dataclass
class Splits:
    """Row indices of each split, and how dev was obtained."""

    train: np.ndarray
    dev: np.ndarray
    test: np.ndarray
    dev_source: str  # "dev" (the cache's own split) or "carved from train"
    note: str  # one line for the run's output
    ignored: dict[str, int] = field(default_factory=dict)  # other split names -> rows

    def get(self, name: str) -> np.ndarray:
        name = canonical_split(name)
        if name not in ("train", "dev", "test"):
            raise DataError(f"unknown split {name!r} (use train, dev or test)")
        return getattr(self, name)


def canonical_split(name: str) -> str:
    name = str(name).strip().lower()
    return "dev" if name in DEV_NAMES else name


def resolve_splits(split_column: np.ndarray, dialogue_keys: np.ndarray, carve: bool = True) -> Splits:
    """Split rows by the table's split column, carving dev from train when it is absent."""
    split = np.array([canonical_split(s) for s in split_column], dtype=object)
    rows = {name: np.nonzero(split == name)[0] for name in ("train", "dev", "test")}
    ignored = {str(s): int(c) for s, c in zip(*np.unique(split[~np.isin(split, ["train", "dev", "test"])], return_counts=True))}
    if len(rows["train"]) == 0:
        raise DataError(f"the cache has no training split (split values: {sorted(set(split.tolist()))})")
    if len(rows["dev"]):
        note = f"dev: the cache's own split ({len(rows['dev'])} utterances)"
        return Splits(rows["train"], rows["dev"], rows["test"], "dev", note, ignored)
    if not carve:
        raise DataError("the cache has no dev split")
    train = rows["train"]
    keys = dialogue_keys[train]
    has_dialogue = keys != ""
    # Utterances without a dialogue are their own group, so they are carved one by one.
    groups = np.where(has_dialogue, keys, np.array([f"\x00row{r}" for r in train], dtype=object))
    unique = np.array(sorted(set(groups.tolist())), dtype=object)
    if len(unique) < 2:
        raise DataError("the cache has no dev split and too little training data to carve one")
    n_dev = max(1, int(round(CARVE_FRACTION * len(unique))))
    dev_groups = set(np.random.default_rng(CARVE_SEED).permutation(unique)[:n_dev].tolist())
    is_dev = np.array([g in dev_groups for g in groups])
    unit = "dialogues" if has_dialogue.any() else "utterances"
    note = (
        f"dev: no dev split in the cache; carved {n_dev} of {len(unique)} training {unit} "
        f"({int(is_dev.sum())} utterances, fixed seed {CARVE_SEED})"
    )
    return Splits(train[~is_dev], train[is_dev], rows["test"], "carved from train", note, ignored)


def dialogue_keys(columns: dict[str, np.ndarray]) -> np.ndarray:
    """(dataset, split, dialogue_id) as one string per row; "" where the row has no dialogue."""
    return np.array(
        [
            f"{dataset}\x1f{canonical_split(split)}\x1f{dialogue}" if str(dialogue) else ""
            for dataset, split, dialogue in zip(columns["dataset"], columns["split"], columns["dialogue_id"])
        ],
        dtype=object,
    )


def detect_task(label_names, labels, multi_names, labels_multi, requested: str = "auto") -> str:
    has_single = bool(len(label_names)) and bool((labels >= 0).any())
    has_multi = bool(len(multi_names)) and bool((~np.isnan(labels_multi)).all(axis=1).any())
    if requested != "auto":
        if requested not in TASKS:
            raise DataError(f"unknown task {requested!r} (use auto, single_label or multi_label)")
        if requested == "single_label" and not has_single:
            raise DataError("task single_label asked for, but the cache has no single labels (label_names/label)")
        if requested == "multi_label" and not has_multi:
            raise DataError("task multi_label asked for, but the cache has no multi-label intensities (labels_multi)")
        return requested
    if has_single and has_multi:
        raise DataError(
            f"the cache has both single labels ({', '.join(label_names)}) and multi-label intensities "
            f"({', '.join(multi_names)}); choose with --task single_label or --task multi_label"
        )
    if has_single:
        return "single_label"
    if has_multi:
        return "multi_label"
    raise DataError("the cache has no labels (neither label/label_names nor labels_multi/labels_multi_names)")


def inspect_task(cache: Cache, requested: str = "auto", supported=TASKS) -> str:
    """The task of `cache` for a model that handles `supported` tasks (reads only label columns)."""
    label_names, multi_names = cache.table.label_names, cache.table.labels_multi_names
    labels, multi = cache.column("label"), cache.column("labels_multi")
    if requested == "auto":
        candidates = [
            t
            for t in TASKS
            if t in supported
            and (
                (t == "single_label" and len(label_names) and (labels >= 0).any())
                or (t == "multi_label" and len(multi_names) and (~np.isnan(multi)).all(axis=1).any())
            )
        ]
        if len(candidates) == 1:
            return candidates[0]
    task = detect_task(label_names, labels, multi_names, multi, requested)
    if task not in supported:
        names = label_names if task == "single_label" else multi_names
        raise DataError(
            f"{cache.path} is a {task} cache (classes: {', '.join(names)}), but this model handles only "
            f"{' and '.join(sorted(supported))} tasks"
        )
    return task


# ---------------------------------------------------------------------------------------------
# Metadata
# ---------------------------------------------------------------------------------------------


@dataclass
class MetadataEncoding:
    """Vocabularies and statistics of the chosen metadata columns, fit on training rows."""

    categorical: dict[str, list[str]] = field(default_factory=dict)  # column -> values (index i+1)
    numeric: dict[str, tuple[float, float]] = field(default_factory=dict)  # column -> (mean, std)

    @classmethod
    def fit(cls, columns: dict[str, np.ndarray], train_rows: np.ndarray, names: list[str]) -> "MetadataEncoding":
        enc = cls()
        for name in names:
            if name not in columns:
                raise DataError(f"no metadata column {name!r} in the utterance table (columns: {', '.join(sorted(columns))})")
            column = columns[name]
            if column.dtype == object or column.dtype.kind in "UST":
                values = np.asarray(column[train_rows], dtype=object).astype(str)
                enc.categorical[name] = sorted({v for v in values if v != ""})
            elif column.ndim == 1 and column.dtype.kind in "iuf":
                values = column[train_rows].astype(np.float64)
                values = values[np.isfinite(values)]
                mean = float(values.mean()) if len(values) else 0.0
                std = float(values.std()) if len(values) else 1.0
                enc.numeric[name] = (mean, std if std > 1e-12 else 1.0)
            else:
                raise DataError(f"metadata column {name!r} has shape {column.shape} / dtype {column.dtype}; only 1-D columns can be used")
        return enc

    def encode(self, columns: dict[str, np.ndarray]) -> tuple[np.ndarray | None, np.ndarray | None]:
        """(N, n_cat) int64 codes (0 = unknown) and (N, n_num) float32, for every row."""
        n = len(columns["id"])
        categorical = None
        if self.categorical:
            categorical = np.zeros((n, len(self.categorical)), dtype=np.int64)
            for j, (name, vocab) in enumerate(self.categorical.items()):
                index = {v: i + 1 for i, v in enumerate(vocab)}
                categorical[:, j] = [index.get(v, 0) for v in np.asarray(columns[name], dtype=object).astype(str)]
        numeric = None
        if self.numeric:
            numeric = np.zeros((n, len(self.numeric)), dtype=np.float32)
            for j, (name, (mean, std)) in enumerate(self.numeric.items()):
                values = (columns[name].astype(np.float64) - mean) / std
                numeric[:, j] = np.where(np.isfinite(values), values, 0.0)
        return categorical, numeric

    def spec(self):
        from fuse.models.base import MetadataSpec

        if not self.categorical and not self.numeric:
            return None
        return MetadataSpec(tuple((name, len(vocab)) for name, vocab in self.categorical.items()), len(self.numeric))

    def state(self) -> dict[str, Any]:
        return {"categorical": self.categorical, "numeric": {k: list(v) for k, v in self.numeric.items()}}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> "MetadataEncoding":
        return cls(dict(state["categorical"]), {k: (float(v[0]), float(v[1])) for k, v in state["numeric"].items()})


def default_metadata_columns(columns: dict[str, np.ndarray]) -> list[str]:
    speaker = np.asarray(columns["speaker"], dtype=object).astype(str)
    return ["speaker"] if (speaker != "").any() else []


# ---------------------------------------------------------------------------------------------
# Dialogue context
# ---------------------------------------------------------------------------------------------


def context_rows(keys: np.ndarray, turns: np.ndarray, n_preceding: int) -> np.ndarray:
    """(N, n_preceding + 1) row indices: preceding turns of the same dialogue then the row itself.

    Left-padded with -1, so the row itself is always the last column. Order within a dialogue
    is by `turn`, ties (and unknown turns, -1) by row order.
    """
    n = len(keys)
    width = n_preceding + 1
    out = np.full((n, width), -1, dtype=np.int64)
    out[:, -1] = np.arange(n)
    has = np.nonzero(keys != "")[0]
    if len(has) == 0 or n_preceding == 0:
        return out
    order = has[np.lexsort((has, turns[has], keys[has]))]
    sorted_keys = keys[order]
    boundaries = np.nonzero(sorted_keys[1:] != sorted_keys[:-1])[0] + 1
    for dialogue in np.split(order, boundaries):
        for position, row in enumerate(dialogue):
            previous = dialogue[max(0, position - n_preceding) : position]
            if len(previous):
                out[row, width - 1 - len(previous) : width - 1] = previous
    return out


def future_key(modality: str) -> str:
    """The `Batch.context` key of a modality's following turns."""
    return f"{modality}{FUTURE_SUFFIX}"


def future_context_rows(keys: np.ndarray, turns: np.ndarray, n_following: int) -> np.ndarray:
    """(N, n_following) row indices of the next turns of the same dialogue, right-padded with -1.

    The next turn is column 0. Order within a dialogue as in `context_rows`.
    """
    n = len(keys)
    out = np.full((n, max(0, n_following)), -1, dtype=np.int64)
    has = np.nonzero(keys != "")[0]
    if len(has) == 0 or n_following <= 0:
        return out
    order = has[np.lexsort((has, turns[has], keys[has]))]
    sorted_keys = keys[order]
    boundaries = np.nonzero(sorted_keys[1:] != sorted_keys[:-1])[0] + 1
    for dialogue in np.split(order, boundaries):
        for position, row in enumerate(dialogue):
            following = dialogue[position + 1 : position + 1 + n_following]
            out[row, : len(following)] = following
    return out


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
        take, lengths = truncated_rows(offsets, local + start - first, max_len)
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        sums = np.add.reduceat(values[take].astype(np.float64), starts, axis=0)
        means[local + start] = sums / lengths[:, None]
    return means


# ---------------------------------------------------------------------------------------------
# The dataset
# ---------------------------------------------------------------------------------------------


@dataclass
class DataSpec:
    """Everything about the data a run fixes at training time (saved with the run)."""

    feature_sets: dict[str, str]  # modality -> feature set
    task: str
    class_names: list[str]
    max_len: dict[str, int]
    normalisation: str = "global"
    metadata: list[str] = field(default_factory=list)
    context_turns: int = 0  # preceding turns in Batch.context; 0: no context
    context_future_turns: int | None = None  # following turns ("<modality>_future"); None: = context_turns
    block_mb: float = DEFAULT_BLOCK_MB
    pool_blocks: int = 4
    block_rows: int | None = None  # overrides block_mb (tests use tiny blocks)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "DataSpec":
        return cls(**d)

    @property
    def n_future_turns(self) -> int:
        """Following turns in Batch.context (0 without context)."""
        if self.context_turns <= 0:
            return 0
        return int(self.context_turns if self.context_future_turns is None else self.context_future_turns)


@dataclass
class Pool:
    """Blocks read together, and the utterances of them to batch."""

    blocks: list[tuple[int, int]]
    utterances: np.ndarray


def default_prefetch() -> bool:
    """Read the next pool in a background thread only when a core is free for it.

    When torch's intra-op threads already occupy every core (CPU training on a small
    machine), a reader thread preempts them and their OpenMP barriers stall, which costs more
    than the reads themselves; reading in line is faster there. `fuse.train` also turns
    prefetching on when the model runs on CUDA, where the CPU threads are mostly idle.
    """
    return (os.cpu_count() or 1) > torch.get_num_threads()


class FeatureData:
    """A cache seen through a DataSpec: splits, labels, normalised features, batches.

    Build with `FeatureData.for_training` (fits normalisation and metadata on train) or
    `FeatureData.for_run` (uses a run's saved statistics, possibly on another cache).
    """

    def __init__(
        self,
        cache: Cache,
        spec: DataSpec,
        normaliser: Normaliser,
        metadata: MetadataEncoding,
        splits: Splits,
        in_memory: bool = False,
        prefetch: bool | None = None,
    ):
        self.cache, self.spec, self.normaliser, self.metadata, self.splits = cache, spec, normaliser, metadata, splits
        self.in_memory = in_memory
        self.normalisation_note = "as stored in the run"  # for_training says how `auto` resolved
        self.prefetch = default_prefetch() if prefetch is None else prefetch
        self.feature_sets: dict[str, FeatureSet] = {m: cache[name] for m, name in spec.feature_sets.items()}
        self.columns = {c: cache.column(c) for c in ("id", "split", "speaker", "dataset", "dialogue_id", "turn")}
        self.n = cache.n_utterances
        self._load_labels()
        self._check_feature_sets()
        self.speakers = np.asarray(self.columns["speaker"], dtype=object).astype(str)
        meta_columns = {c: cache.column(c) for c in spec.metadata}
        meta_columns["id"] = self.columns["id"]
        self.metadata_categorical, self.metadata_numeric = metadata.encode(meta_columns)
        self._memory: dict[str, dict[int, np.ndarray | None]] = {m: {} for m in self.feature_sets}
        self._group_rows = {m: None for m in self.feature_sets}
        self._sort_length = self._lengths_for_bucketing()
        self._blocks = self._make_blocks()
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
        pool_blocks: int = 4,
        block_rows: int | None = None,
        progress: bool = False,
    ) -> "FeatureData":
        feature_sets = select_feature_sets(cache, requested)
        table_columns = {c: cache.column(c) for c in ("id", "split", "dataset", "dialogue_id", "speaker", "label", "labels_multi")}
        label_names, multi_names = cache.table.label_names, cache.table.labels_multi_names
        task = detect_task(label_names, table_columns["label"], multi_names, table_columns["labels_multi"], task)
        class_names = list(label_names if task == "single_label" else multi_names)
        unknown = sorted(set(max_len or {}) - set(MODALITIES))
        if unknown:
            raise DataError(f"max_len: unknown modality {unknown[0]!r} (use text, audio or video)")
        if any(int(v) < 1 for v in (max_len or {}).values()):
            raise DataError(f"max_len: lengths must be >= 1, got {max_len}")
        lengths = dict(DEFAULT_MAX_LEN)
        lengths.update(max_len or {})
        spec_max_len = {m: int(lengths[m]) for m in feature_sets}
        if metadata is None:
            metadata = default_metadata_columns(table_columns)
        splits = resolve_splits(table_columns["split"], dialogue_keys(table_columns))
        if normalisation != AUTO and normalisation not in MODES:
            raise DataError(f"normalisation {normalisation!r} is not one of {AUTO}, {', '.join(MODES)}")
        normalisation, normalisation_note = resolve_mode(normalisation, table_columns["speaker"], splits.train)
        spec = DataSpec(
            feature_sets=feature_sets,
            task=task,
            class_names=class_names,
            max_len=spec_max_len,
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
        meta_columns = {c: cache.column(c) for c in metadata}
        encoding = MetadataEncoding.fit(meta_columns, splits.train, list(metadata))
        sets = {name: cache[name] for name in feature_sets.values()}
        by_name = {name: spec_max_len[m] for m, name in feature_sets.items()}
        data_block_rows = cls._block_rows_for(spec, sets)
        try:
            normaliser = Normaliser.fit(normalisation, sets, splits.train, table_columns["speaker"], by_name, data_block_rows)
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
        table_columns = {c: cache.column(c) for c in ("split", "dataset", "dialogue_id")}
        splits = resolve_splits(table_columns["split"], dialogue_keys(table_columns))
        names = cache.table.label_names if spec.task == "single_label" else cache.table.labels_multi_names
        if list(names) and list(names) != list(spec.class_names):
            raise DataError(f"{cache.path}: classes {list(names)} differ from the run's {spec.class_names}")
        data = cls(cache, spec, normaliser, metadata, splits, in_memory=in_memory)
        data.prepare()
        return data

    @staticmethod
    def _block_rows_for(spec: DataSpec, sets: dict[str, FeatureSet]) -> int:
        primary = max(sets.values(), key=lambda fs: fs.values.shape[0] * fs.dim * np.dtype(fs.dtype).itemsize)
        if spec.block_rows:
            return int(spec.block_rows)
        row_bytes = primary.dim * np.dtype(primary.dtype).itemsize
        return int(max(1, min(primary.shard_rows, spec.block_mb * 2**20 // row_bytes)))

    def prepare(self, rows: np.ndarray | None = None) -> None:
        """Statistics that depend on the cache at hand: unseen speakers, dialogue context."""
        rows = np.arange(self.n) if rows is None else rows
        by_name = {self.spec.feature_sets[m]: self.spec.max_len[m] for m in self.feature_sets}
        sets = {fs.name: fs for fs in self.feature_sets.values()}
        block_rows = self._block_rows_for(self.spec, self.feature_sets)
        self.normaliser.prepare(sets, rows, self.speakers, by_name, block_rows)
        self._group_rows = {m: self.normaliser.group_rows(fs.name, self.speakers) for m, fs in self.feature_sets.items()}
        if self.spec.context_turns > 0:
            keys = dialogue_keys({c: self.columns[c] for c in ("dataset", "split", "dialogue_id")})
            turns = np.asarray(self.columns["turn"], dtype=np.int64)
            self.context_index = context_rows(keys, turns, self.spec.context_turns)
            self.future_index = future_context_rows(keys, turns, self.spec.n_future_turns)
            window = np.concatenate([self.context_index[rows], self.future_index[rows]], axis=1)
            needed = np.unique(window[window >= 0])
            for m, fs in self.feature_sets.items():
                raw = utterance_means(fs, needed, self.spec.max_len[m], block_rows)
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

    def _check_feature_sets(self) -> None:
        for modality, fs in self.feature_sets.items():
            if len(fs) != self.n:
                raise DataError(
                    f"feature set {fs.name!r} describes {len(fs)} utterances but the table has {self.n}; re-run extraction"
                )

    def _lengths_for_bucketing(self) -> np.ndarray:
        total = np.zeros(self.n, dtype=np.int64)
        for m, fs in self.feature_sets.items():
            total += np.minimum(fs.lengths, self.spec.max_len[m])
        return total

    def _make_blocks(self) -> list[tuple[int, int]]:
        primary = max(self.feature_sets.values(), key=lambda fs: fs.values.shape[0] * fs.dim)
        return list(primary.iter_blocks(self._block_rows_for(self.spec, self.feature_sets)))

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
    def plan(self, indices: np.ndarray, batch_size: int, shuffle: bool, seed: int = 0, epoch: int = 0) -> tuple[list[Pool], np.random.Generator | None]:
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

    def n_batches(self, indices: np.ndarray, batch_size: int, shuffle: bool = False, seed: int = 0, epoch: int = 0) -> int:
        pools, _ = self.plan(indices, batch_size, shuffle, seed, epoch)
        return sum(math.ceil(len(p.utterances) / batch_size) for p in pools)

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
    ) -> Iterator[Batch]:
        """Batches over `indices`: each utterance exactly once. See the module docstring.

        shuffle=False walks blocks and utterances in cache order; `bucket` (default: same as
        shuffle) sorts each pool by length before cutting it into batches.
        """
        bucket = shuffle if bucket is None else bucket
        pools, rng = self.plan(indices, batch_size, shuffle, seed, epoch)
        # Random draws happen here, in a fixed order, so prefetching cannot change them.
        orders = [self._pool_order(p, batch_size, rng, bucket) for p in pools]
        if not self.prefetch or len(pools) < 2:
            for pool, order in zip(pools, orders):
                yield from self._pool_batches(pool, order, with_labels)
            return
        # The reader thread prepares the next pool's arrays; batches are padded here, one at a
        # time, so at most two pools of arrays and one padded batch are alive at once.
        with concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="fuse-prefetch") as pool_reader:
            future = pool_reader.submit(self._read_pool, pools[0])
            for k in range(len(pools)):
                arrays = future.result()
                if k + 1 < len(pools):
                    future = pool_reader.submit(self._read_pool, pools[k + 1])
                for utts in orders[k]:
                    yield self.make_batch(utts, {m: [arrays[m][int(u)] for u in utts] for m in self.feature_sets}, with_labels)
                del arrays

    def _pool_order(self, pool: Pool, batch_size: int, rng, bucket: bool) -> list[np.ndarray]:
        utts = pool.utterances
        if rng is not None:
            utts = utts[rng.permutation(len(utts))]
        if bucket:
            utts = utts[np.argsort(self._sort_length[utts], kind="stable")]
        batches = [utts[i : i + batch_size] for i in range(0, len(utts), batch_size)]
        if rng is not None:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        return batches

    def _pool_batches(self, pool: Pool, order: list[np.ndarray], with_labels: bool) -> Iterator[Batch]:
        arrays = self._read_pool(pool)
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
        cap = self.spec.max_len[modality]
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
        modalities = {}
        for m, items in arrays.items():
            dim = self.feature_sets[m].dim
            lengths = [0 if a is None else len(a) for a in items]
            t = max(1, max(lengths))
            values = np.zeros((len(items), t, dim), dtype=np.float32)
            mask = np.zeros((len(items), t), dtype=bool)
            for i, a in enumerate(items):
                if a is not None:
                    values[i, : len(a)] = a
                    mask[i, : len(a)] = True
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
            batch.context = self._context(utts)
        return batch

    def _context(self, utts: np.ndarray) -> dict[str, ModalityInput]:
        rows = self.context_index[utts]  # (B, K), -1 left padding
        used = rows >= 0
        first = int(np.argmax(used.any(axis=0)))  # drop leading columns padded in every row
        rows, used = rows[:, first:], used[:, first:]
        safe = np.where(used, rows, 0)
        context = {}
        for m, fs in self.feature_sets.items():
            mask = used & fs.present[safe]
            values = self.context_means[m][safe] * mask[..., None]
            context[m] = ModalityInput(
                torch.from_numpy(values.astype(np.float32)), torch.from_numpy(mask), torch.from_numpy(mask.any(axis=1))
            )
        if self.future_index is not None and self.future_index.shape[1] > 0:
            rows = self.future_index[utts]  # (B, F), -1 right padding
            used = rows >= 0
            width = max(1, int(used.sum(axis=1).max()))  # drop trailing columns padded in every row
            rows, used = rows[:, :width], used[:, :width]
            safe = np.where(used, rows, 0)
            for m, fs in self.feature_sets.items():
                mask = used & fs.present[safe]
                values = self.context_means[m][safe] * mask[..., None]
                context[future_key(m)] = ModalityInput(
                    torch.from_numpy(values.astype(np.float32)), torch.from_numpy(mask), torch.from_numpy(mask.any(axis=1))
                )
        return context

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
            "truncated_utterances": {
                m: int((fs.lengths > self.spec.max_len[m]).sum()) for m, fs in self.feature_sets.items()
            },
            "missing": {m: int((~fs.present).sum()) for m, fs in self.feature_sets.items()},
            "context_turns": self.spec.context_turns,
            "context_future_turns": self.spec.n_future_turns,
            "blocks": len(self._blocks),
        }


def open_for_training(cache_path, **kwargs) -> FeatureData:
    from cache_schema import open_cache

    try:
        cache = open_cache(cache_path)
    except CacheError as exc:
        raise DataError(str(exc)) from None
    return FeatureData.for_training(cache, **kwargs)
