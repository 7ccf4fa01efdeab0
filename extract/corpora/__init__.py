"""Stage-1 corpus adapters: turn a corpus on disk into an `UtteranceTable`.

One adapter per corpus layout, each a function `load_<kind>(**options) -> UtteranceTable`:

    meld          MELD `{split}_sent_emo.csv` transcripts (+ optional mp4 clips)   -> meld.py
    mosei_csd     CMU-MOSEI computational sequences (labels + words .csd files)    -> mosei.py
    manifest      a generic CSV / JSONL manifest, one row per utterance            -> manifest.py
    audio_folder  a folder of audio files whose names encode labels (EmoDB)        -> audio_folder.py

`load_corpus(spec)` dispatches on `spec["kind"]`; the remaining keys are the adapter's options
(see docs/corpora.md). Media references go into the metadata columns `audio_path` and
`video_path` (absolute path strings, "" when none); stage-1 extraction reads media from there.

Every adapter accepts `report=` (a dict it fills with provenance counts such as repaired
text rows or skipped files) because `UtteranceTable` has no place for per-load notes and the
extraction workflow wants to store them next to the cache.

Errors are `CorpusError` (a `ValueError`) whose message names the file, the row or utterance
and the problem.
"""
from __future__ import annotations

import inspect
from typing import Any, Callable, Iterable, Mapping

from cache_schema.errors import CacheError
from cache_schema.table import UtteranceTable


class CorpusError(ValueError):
    """A corpus file is missing, unreadable or holds a value the adapter cannot use."""


def fold_label(name: str) -> str:
    """The one spelling of a class name in every adapter: stripped and case-folded (`Joy` == `joy`).

    Corpora spell classes inconsistently (MELD's CSVs mix `Joy`/`joy` across releases; hand-made
    manifests too), and two spellings must never become two classes.
    """
    return str(name).strip().casefold()


def fold_label_names(names: Iterable[str], source: str) -> list[str]:
    """`fold_label` over a list of class names; names equal after folding are a CorpusError."""
    names = [str(n) for n in names]
    folded = [fold_label(n) for n in names]
    clashes = sorted({n for n in names if folded.count(fold_label(n)) > 1})
    if clashes:
        raise CorpusError(f"{source}: label names {clashes} are the same class once case is folded (labels are case-insensitive)")
    return folded


def table_from_records(
    source: str, records: list[dict], label_names: Iterable[str] = (), labels_multi_names: Iterable[str] = ()
) -> UtteranceTable:
    """`UtteranceTable.from_records`, with contract violations reported as CorpusError naming `source`.

    Adapters check ids and labels themselves with row-level messages; this is the safety net
    for anything the table contract rejects beyond that.
    """
    label_names = fold_label_names(label_names, source)  # the safety net: every adapter folds already
    labels_multi_names = fold_label_names(labels_multi_names, source)
    records = [{**r, "label": fold_label(r["label"])} if isinstance(r.get("label"), str) else r for r in records]
    try:
        return UtteranceTable.from_records(records, label_names, labels_multi_names)
    except CacheError as err:
        raise CorpusError(f"{source}: {err}") from err


# The adapter modules import CorpusError from this package, so they are imported only after
# it is defined.
from .audio_folder import EMODB_PRESET, load_audio_folder  # noqa: E402
from .manifest import load_manifest  # noqa: E402
from .meld import MELD_EMOTIONS, MELD_SENTIMENTS, load_meld, repair_mojibake  # noqa: E402
from .mosei import (  # noqa: E402
    MOSEI_EMOTIONS,
    MOSEI_MODALITIES,
    MoseiModality,
    SegmentFeature,
    SegmentFeatures,
    hash_split,
    iter_mosei_segment_features,
    load_mosei_csd,
    mosei_dims,
    mosei_feature_arrays,
    read_folds,
)

ADAPTERS: dict[str, Callable[..., UtteranceTable]] = {
    "meld": load_meld,
    "mosei_csd": load_mosei_csd,
    "manifest": load_manifest,
    "audio_folder": load_audio_folder,
}


def load_corpus(spec: Mapping[str, Any], report: dict | None = None) -> UtteranceTable:
    """Build the utterance table described by `spec` = {"kind": ..., **adapter options}.

    Unknown kinds and unknown options are errors (a typo in a config must not be ignored).
    `report`, when given, is filled with the adapter's provenance counts.
    """
    if not isinstance(spec, Mapping):
        raise CorpusError(f"corpus spec must be a mapping with a 'kind' key, got {type(spec).__name__}")
    options = dict(spec)
    kind = options.pop("kind", None)
    if kind not in ADAPTERS:
        raise CorpusError(f"corpus spec: unknown kind {kind!r}; expected one of {sorted(ADAPTERS)}")
    adapter = ADAPTERS[kind]
    parameters = inspect.signature(adapter).parameters
    accepted = [name for name in parameters if name != "report"]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise CorpusError(f"corpus spec of kind {kind!r}: unknown option(s) {unknown}; accepted: {accepted}")
    required = [n for n, p in parameters.items() if p.default is inspect.Parameter.empty and n != "report"]
    absent = [n for n in required if n not in options]
    if absent:
        raise CorpusError(f"corpus spec of kind {kind!r}: missing required option(s) {absent}")
    return adapter(**options, report=report)


__all__ = [
    "ADAPTERS",
    "CorpusError",
    "EMODB_PRESET",
    "MELD_EMOTIONS",
    "MELD_SENTIMENTS",
    "MOSEI_EMOTIONS",
    "MOSEI_MODALITIES",
    "MoseiModality",
    "SegmentFeature",
    "SegmentFeatures",
    "hash_split",
    "iter_mosei_segment_features",
    "load_audio_folder",
    "load_corpus",
    "load_manifest",
    "load_meld",
    "load_mosei_csd",
    "mosei_dims",
    "mosei_feature_arrays",
    "read_folds",
    "repair_mojibake",
    "table_from_records",
    "fold_label",
    "fold_label_names",
]
