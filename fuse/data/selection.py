"""Which feature sets, which splits and which task a run uses.

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
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from cache_schema import Cache, FeatureSet
from fuse.batch import MODALITIES
from fuse.data.spec import TASKS, DataError

DEV_NAMES = ("dev", "valid", "val", "validation")
CARVE_FRACTION = 0.1
CARVE_SEED = 20240601  # fixed: the carved dev split must not change with --seed


# ---------------------------------------------------------------------------------------------
# Feature sets
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


# ---------------------------------------------------------------------------------------------
# Splits
# ---------------------------------------------------------------------------------------------


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


def dialogue_keys(columns: dict[str, np.ndarray]) -> np.ndarray:
    """(dataset, split, dialogue_id) as one string per row; "" where the row has no dialogue.

    Corpora such as MELD reuse dialogue ids across splits, hence the split in the key.
    """
    return np.array(
        [
            f"{dataset}\x1f{canonical_split(split)}\x1f{dialogue}" if str(dialogue) else ""
            for dataset, split, dialogue in zip(columns["dataset"], columns["split"], columns["dialogue_id"])
        ],
        dtype=object,
    )


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


# ---------------------------------------------------------------------------------------------
# Task
# ---------------------------------------------------------------------------------------------


def _available_tasks(label_names, labels, multi_names, labels_multi) -> list[str]:
    has_single = bool(len(label_names)) and bool((labels >= 0).any())
    has_multi = bool(len(multi_names)) and bool((~np.isnan(labels_multi)).all(axis=1).any())
    return [t for t, has in zip(TASKS, (has_single, has_multi)) if has]


def detect_task(label_names, labels, multi_names, labels_multi, requested: str = "auto") -> str:
    available = _available_tasks(label_names, labels, multi_names, labels_multi)
    if requested != "auto":
        if requested not in TASKS:
            raise DataError(f"unknown task {requested!r} (use auto, single_label or multi_label)")
        if requested == "single_label" and requested not in available:
            raise DataError("task single_label asked for, but the cache has no single labels (label_names/label)")
        if requested == "multi_label" and requested not in available:
            raise DataError("task multi_label asked for, but the cache has no multi-label intensities (labels_multi)")
        return requested
    if len(available) == 2:
        raise DataError(
            f"the cache has both single labels ({', '.join(label_names)}) and multi-label intensities "
            f"({', '.join(multi_names)}); choose with --task single_label or --task multi_label"
        )
    if available:
        return available[0]
    raise DataError("the cache has no labels (neither label/label_names nor labels_multi/labels_multi_names)")


def inspect_task(cache: Cache, requested: str = "auto", supported=TASKS) -> str:
    """The task of `cache` for a model that handles `supported` tasks (reads only label columns)."""
    label_names, multi_names = cache.table.label_names, cache.table.labels_multi_names
    labels, multi = cache.column("label"), cache.column("labels_multi")
    if requested == "auto":
        candidates = [t for t in _available_tasks(label_names, labels, multi_names, multi) if t in supported]
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
