"""Which feature sets, which splits and which task a run uses.

* **Feature sets.** One feature set per modality (`--text/--audio/--video NAME`, or `none`).
  When a modality is not named and the cache holds exactly one set of that modality it is
  used; several raise an error listing them. A set's modality is its `modality` attribute,
  else the part of its name before the first dot (`audio.wav2vec2-base` -> audio).
* **Splits.** `train`, `dev` (also spelled `valid`, `val`, `validation`) and `test`. Without a
  dev split, dev is carved from train by one of two rules, and the run's note (printed, and
  recorded as the run's `dev_split`) names the rule and why:
  - *speakers*: when the split is speaker-independent (every train and test utterance names
    its speaker, no test speaker is in train, and train has >= 2 speakers), a deterministic
    10% of the training speakers (at least one) becomes dev, whole. Dev then mirrors test
    (unseen speakers), so early stopping and the best epoch are chosen on what the run is
    scored on; carving utterances of the training speakers instead made dev read ~0.1 UAR
    above test on EmoDB and pick epochs on a leaky split (issue 18).
  - *dialogues* otherwise: a deterministic 10% of the training dialogues (utterances, when
    there are no dialogues) becomes dev.
  Speakers are told apart per dataset ("01" of two corpora are two people). The carve uses a
  fixed seed, not the run's seed, so every seed of an experiment sees the same split.
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
    dev_rule: str = "cache"  # "cache", or the carve's unit: "speakers", "dialogues", "utterances"

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


def speaker_keys(columns: dict[str, np.ndarray]) -> np.ndarray:
    """(dataset, speaker) as one string per row; "" where the row names no speaker.

    Unlike dialogue keys there is no split in the key: a speaker is the same person in every
    split, which is what speaker independence is about.
    """
    return np.array(
        [f"{dataset}\x1f{speaker}" if str(speaker) else "" for dataset, speaker in zip(columns["dataset"], columns["speaker"])],
        dtype=object,
    )


def _speaker_independence(train_speakers: np.ndarray, test_speakers: np.ndarray) -> str | None:
    """None when the split is speaker-independent enough to carve dev by speaker, else why not."""
    if len(test_speakers) == 0:
        return "no test split to compare speakers with"
    if (train_speakers == "").any() or (test_speakers == "").any():
        return "not every train/test utterance names its speaker"
    shared = set(test_speakers.tolist()) & set(train_speakers.tolist())
    if shared:
        return f"{len(shared)} of {len(set(test_speakers.tolist()))} test speakers are also in train"
    if len(set(train_speakers.tolist())) < 2:
        return "train has a single speaker"
    return None


def _carve(groups: np.ndarray) -> tuple[np.ndarray, int, int]:
    """(is_dev per row, groups carved, groups in all): a fixed-seed 10% of the groups, >= 1."""
    unique = np.array(sorted(set(groups.tolist())), dtype=object)
    n_dev = max(1, int(round(CARVE_FRACTION * len(unique))))
    dev_groups = set(np.random.default_rng(CARVE_SEED).permutation(unique)[:n_dev].tolist())
    return np.array([g in dev_groups for g in groups], dtype=bool), n_dev, len(unique)


def resolve_splits(split_column: np.ndarray, dialogue_keys: np.ndarray, carve: bool = True, speakers: np.ndarray | None = None) -> Splits:
    """Split rows by the table's split column, carving dev from train when it is absent.

    `speakers`: `speaker_keys` of the table; with them a speaker-independent split carves dev
    as whole speakers (module docstring). Without them dev is carved by dialogue.
    """
    split = np.array([canonical_split(s) for s in split_column], dtype=object)
    rows = {name: np.nonzero(split == name)[0] for name in ("train", "dev", "test")}
    ignored = {str(s): int(c) for s, c in zip(*np.unique(split[~np.isin(split, ["train", "dev", "test"])], return_counts=True))}
    if len(rows["train"]) == 0:
        raise DataError(f"the cache has no training split (split values: {sorted(set(split.tolist()))})")
    if len(rows["dev"]):
        note = f"dev: the cache's own split ({len(rows['dev'])} utterances)"
        return Splits(rows["train"], rows["dev"], rows["test"], "dev", note, ignored, "cache")
    if not carve:
        raise DataError("the cache has no dev split")
    train = rows["train"]
    why_not = "no speaker column given"
    if speakers is not None:
        speakers = np.asarray(speakers, dtype=object).astype(str)
        why_not = _speaker_independence(speakers[train], speakers[rows["test"]])
    if why_not is None:
        is_dev, n_dev, n_groups = _carve(speakers[train])
        note = (
            f"dev: no dev split in the cache; the split is speaker-independent (no test speaker in train), so dev takes "
            f"whole speakers: carved {n_dev} of {n_groups} training speakers ({int(is_dev.sum())} utterances, fixed seed {CARVE_SEED})"
        )
        return Splits(train[~is_dev], train[is_dev], rows["test"], "carved from train", note, ignored, "speakers")
    keys = dialogue_keys[train]
    has_dialogue = keys != ""
    # Utterances without a dialogue are their own group, so they are carved one by one.
    groups = np.where(has_dialogue, keys, np.array([f"\x00row{r}" for r in train], dtype=object))
    if len(set(groups.tolist())) < 2:
        raise DataError("the cache has no dev split and too little training data to carve one")
    is_dev, n_dev, n_groups = _carve(groups)
    unit = "dialogues" if has_dialogue.any() else "utterances"
    note = (
        f"dev: no dev split in the cache; carved {n_dev} of {n_groups} training {unit} "
        f"({int(is_dev.sum())} utterances, fixed seed {CARVE_SEED}; not by speaker: {why_not})"
    )
    return Splits(train[~is_dev], train[is_dev], rows["test"], "carved from train", note, ignored, unit)


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
    label_names, multi_names = cache.label_names, cache.labels_multi_names
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
