"""CMU-MOSEI computational sequences (.csd): utterance table and per-segment feature loaders.

A .csd file is HDF5 written by the CMU-MultimodalSDK: one top-level group (the "root name",
e.g. "COVAREP", "FACET 4.2", "All Labels") holding `data/<video_id>/{features, intervals}`
(intervals in seconds, shape (n, 2)) and `metadata/`. Sequences are per VIDEO; the labelled
utterance segments are the intervals of the labels file.

Choices made where the seeds are vague:

- Utterance id `"{video_id}[{start:.3f},{end:.3f}]"`; `dialogue_id` = video id (a MOSEI video is
  one speaker's monologue, its segments are the "turns"); `speaker` is left "" because MOSEI
  ships no speaker ids (the video id is in the `video_id` metadata column).
- Labels: `sentiment` = column 0 (in [-3, 3]); `labels_multi` = the six emotion intensities
  MOSEI_EMOTIONS (in [0, 3]). Presence (> 0) is decided by the fuse stage, not here.
  There is no single `label` (all -1).
- Text = the segment's words joined by spaces, without the "sp" pause tokens.
- Cutting a modality to a segment takes every frame whose half-open interval [s, e)
  intersects the segment [seg_start, seg_end), i.e. s < seg_end and e > seg_start. No
  alignment across modalities and no padding: the seed's CARAT model consumes unaligned,
  variable-length sequences. A segment with no such frame is missing (None), as is a video
  absent from a modality file; both come with a note.
- Non-finite values (COVAREP has -inf on some frames) are set to 0 and counted, so the count
  can go into the cache's provenance.
- Splits: `folds` (a JSON or text file of video ids) or, by default, a deterministic split by
  a SHA-256 hash of the video id: train if u < 0.7, dev if u < 0.8, else test, where u is the
  first 8 digest bytes as a fraction of 2**64. The standard SDK folds are the better choice
  when you have them; the hash split is stable across machines and runs.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, NamedTuple, Sequence

import h5py
import numpy as np

from cache_schema.table import UtteranceTable

from . import CorpusError, table_from_records

log = logging.getLogger(__name__)

MOSEI_EMOTIONS = ["happy", "sad", "anger", "surprise", "disgust", "fear"]
LABELS_FILE = "CMU_MOSEI_Labels.csd"
WORDS_FILE = "CMU_MOSEI_TimestampedWords.csd"
PAUSE_TOKEN = "sp"
DEFAULT_SPLIT_FRACTIONS = (0.7, 0.1, 0.2)
_FOLD_NAMES = {
    "train": "train", "standard_train_fold": "train",
    "dev": "dev", "valid": "dev", "standard_valid_fold": "dev",
    "test": "test", "standard_test_fold": "test",
}


@dataclass(frozen=True)
class MoseiModality:
    """One CMU-MOSEI feature file: its default name, feature width and frame rate."""

    name: str
    file_name: str
    root_name: str  # the root group name in the official files (informational)
    dim: int
    rate_hz: float | None  # frames per second; None when rows are words, not frames
    unit: str  # "frame" or "word"


MOSEI_MODALITIES: dict[str, MoseiModality] = {
    "covarep": MoseiModality("covarep", "CMU_MOSEI_COVAREP.csd", "COVAREP", 74, 100.0, "frame"),
    "facet": MoseiModality("facet", "CMU_MOSEI_VisualFacet42.csd", "FACET 4.2", 35, 30.0, "frame"),
    "glove": MoseiModality("glove", "CMU_MOSEI_TimestampedWordVectors.csd", "glove_vectors", 300, None, "word"),
    "words": MoseiModality("words", WORDS_FILE, "words", 1, None, "word"),
}


class ComputationalSequence:
    """Read-only view of one .csd file; every HDF5 failure becomes a CorpusError naming it."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise CorpusError(f"{self.path}: computational sequence file does not exist")
        try:
            self._file = h5py.File(self.path, "r")
        except (OSError, ValueError) as err:
            raise CorpusError(f"{self.path}: not a readable HDF5 computational sequence ({err})") from err
        try:
            keys = list(self._file.keys())
            if len(keys) != 1:
                raise CorpusError(f"{self.path}: expected exactly one top-level group (the root name), found {keys}")
            self.root_name = keys[0]
            root = self._file[self.root_name]
            if not isinstance(root, h5py.Group) or not isinstance(root.get("data"), h5py.Group):
                raise CorpusError(f"{self.path}: root group {self.root_name!r} has no 'data' group")
            self._data = root["data"]
            self.video_ids: list[str] = list(self._data.keys())
        except CorpusError:
            self._file.close()
            raise
        except (OSError, RuntimeError, KeyError, ValueError) as err:
            self._file.close()
            raise CorpusError(f"{self.path}: corrupt computational sequence ({err})") from err

    def __enter__(self) -> "ComputationalSequence":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        self._file.close()

    def __contains__(self, video_id: str) -> bool:
        return video_id in self._data

    def read(self, video_id: str) -> tuple[np.ndarray, np.ndarray]:
        """(intervals (n, 2) float64, features (n, ...)) of one video, shapes checked."""
        where = f"{self.path} video {video_id!r}"
        try:
            group = self._data[video_id]
            if isinstance(group, h5py.Group):
                # A damaged file can hold another object (a group, a named datatype) under the name.
                for name in ("intervals", "features"):
                    item = group.get(name)
                    if item is not None and not isinstance(item, h5py.Dataset):
                        raise CorpusError(f"{where}: '{name}' is a {type(item).__name__}, not a dataset (file corrupt?)")
            intervals = np.asarray(group["intervals"][()], dtype=np.float64)
            features = np.asarray(group["features"][()])
        except KeyError as err:
            raise CorpusError(f"{where}: missing 'features' or 'intervals' ({err})") from err
        except (OSError, RuntimeError, ValueError, TypeError) as err:  # TypeError: a named datatype in place of a group
            raise CorpusError(f"{where}: unreadable data, file truncated or corrupt? ({err})") from err
        if intervals.ndim != 2 or intervals.shape[1] != 2:
            raise CorpusError(f"{where}: intervals have shape {intervals.shape}, expected (n, 2)")
        if features.ndim < 1 or features.shape[0] != intervals.shape[0]:
            raise CorpusError(f"{where}: {features.shape[0] if features.ndim else 0} feature rows but {intervals.shape[0]} intervals")
        return intervals, features


def overlapping_frames(intervals: np.ndarray, start: float, end: float) -> np.ndarray:
    """Boolean mask of frames whose half-open [s, e) intersects the segment [start, end)."""
    return (intervals[:, 0] < end) & (intervals[:, 1] > start)


def hash_split(video_id: str, fractions: Sequence[float] = DEFAULT_SPLIT_FRACTIONS) -> str:
    """Deterministic train/dev/test assignment of a video from a SHA-256 of its id."""
    digest = hashlib.sha256(video_id.encode("utf-8")).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    train, dev, _test = fractions
    return "train" if u < train else "dev" if u < train + dev else "test"


def read_folds(path: str | Path) -> dict[str, str]:
    """video id -> split from a folds file.

    `.json`: an object mapping split names to lists of video ids; names train/dev/test or the
    SDK's standard_train_fold/standard_valid_fold/standard_test_fold ("valid" = dev).
    Anything else: text, one `video_id split` per line (whitespace or comma separated,
    `#` comments).
    """
    path = Path(path)
    try:
        content = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise CorpusError(f"{path}: cannot read folds file ({err})") from err
    pairs: list[tuple[str, str, str]] = []  # (video, fold name, where)
    if path.suffix.lower() == ".json":
        try:
            folds = json.loads(content)
        except json.JSONDecodeError as err:
            raise CorpusError(f"{path}: invalid JSON ({err})") from err
        if not isinstance(folds, dict):
            raise CorpusError(f"{path}: expected an object of split name -> list of video ids")
        for name, videos in folds.items():
            if not isinstance(videos, list) or not all(isinstance(v, str) for v in videos):
                raise CorpusError(f"{path}: fold {name!r} must be a list of video id strings")
            pairs.extend((v, name, f"fold {name!r}") for v in videos)
    else:
        for line_no, line in enumerate(content.splitlines(), start=1):
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            parts = line.replace(",", " ").split()
            if len(parts) != 2:
                raise CorpusError(f"{path} line {line_no}: expected 'video_id split', got {line!r}")
            pairs.append((parts[0], parts[1], f"line {line_no}"))
    assignment: dict[str, str] = {}
    for video, name, where in pairs:
        if name not in _FOLD_NAMES:
            raise CorpusError(f"{path} {where}: unknown split {name!r}; expected one of {sorted(_FOLD_NAMES)}")
        split = _FOLD_NAMES[name]
        if assignment.get(video, split) != split:
            raise CorpusError(f"{path} {where}: video {video!r} is in both {assignment[video]!r} and {split!r}")
        assignment[video] = split
    return assignment


def segment_id(video_id: str, start: float, end: float) -> str:
    return f"{video_id}[{start:.3f},{end:.3f}]"


def load_mosei_csd(
    root: str,
    labels_file: str = LABELS_FILE,
    words_file: str | None = WORDS_FILE,
    folds: str | None = None,
    unassigned_videos: str = "error",
    split_fractions: Sequence[float] = DEFAULT_SPLIT_FRACTIONS,
    dataset: str = "mosei",
    report: dict | None = None,
) -> UtteranceTable:
    """One row per labelled segment of the labels file, in file order (videos, then segments).

    A labels file without any segment (or whose every video is dropped) is a CorpusError, as
    are labels or intervals that are not numbers.

    words_file: None to leave text empty on purpose (a named file that is absent is an error).
    folds: path of a folds file (see `read_folds`); videos it does not list are an error, or
    dropped with unassigned_videos="drop". Without folds, `hash_split` with split_fractions.
    """
    root_path = Path(root).expanduser().resolve()
    if not root_path.is_dir():
        raise CorpusError(f"MOSEI root {root_path} is not a folder")
    if unassigned_videos not in ("error", "drop"):
        raise CorpusError(f"unassigned_videos must be 'error' or 'drop', got {unassigned_videos!r}")
    try:
        fractions = tuple(float(f) for f in split_fractions)
    except (TypeError, ValueError) as err:
        raise CorpusError(f"split_fractions must be three numbers, got {split_fractions!r}") from err
    if len(fractions) != 3 or any(f < 0 for f in fractions) or not math.isclose(sum(fractions), 1.0):
        raise CorpusError(f"split_fractions must be three non-negative numbers summing to 1, got {split_fractions}")
    fold_of = read_folds(_resolve(root_path, folds)) if folds else None

    labels_path = _resolve(root_path, labels_file)
    words = ComputationalSequence(_resolve(root_path, words_file)) if words_file else None
    records: list[dict[str, Any]] = []
    dropped: list[str] = []
    try:
        with ComputationalSequence(labels_path) as labels:
            for video in labels.video_ids:
                if fold_of is not None:
                    if video not in fold_of:
                        if unassigned_videos == "drop":
                            dropped.append(video)
                            continue
                        raise CorpusError(f"{labels_path} video {video!r}: not listed in folds file {folds}")
                    split = fold_of[video]
                else:
                    split = hash_split(video, fractions)
                records.extend(_video_records(labels, video, split, words, dataset))
    finally:
        if words is not None:
            words.close()

    if not records:
        dropped_note = f" (every video, {len(dropped)}, was dropped: not in folds file {folds})" if dropped else ""
        raise CorpusError(f"{labels_path}: no labelled segments{dropped_note}")
    seen: dict[str, int] = {}
    for i, record in enumerate(records):
        if record["id"] in seen:
            raise CorpusError(f"{labels_path}: two segments share the id {record['id']!r} (rows {seen[record['id']]} and {i})")
        seen[record["id"]] = i
    if report is not None:
        report.update(
            {
                "kind": "mosei_csd",
                "labels_file": str(labels_path),
                "words_file": str(words.path) if words is not None else "",
                "rows": len(records),
                "videos": len({r["video_id"] for r in records}),
                "dropped_videos": dropped,
                "text_missing": sum(1 for r in records if r["text_missing_reason"]),
                "split_rule": f"folds file {folds}" if folds else f"sha256 hash of video id, fractions {fractions}",
            }
        )
    return table_from_records(str(labels_path), records, (), MOSEI_EMOTIONS)


def _video_records(
    labels: ComputationalSequence, video: str, split: str, words: ComputationalSequence | None, dataset: str
) -> list[dict[str, Any]]:
    intervals, values = labels.read(video)
    where = f"{labels.path} video {video!r}"
    if values.ndim != 2 or values.shape[1] != 1 + len(MOSEI_EMOTIONS):
        raise CorpusError(f"{where}: labels have shape {values.shape}, expected (n, 7): sentiment + {MOSEI_EMOTIONS}")
    for name, array in (("labels", values), ("intervals", intervals)):
        if not np.issubdtype(array.dtype, np.number):
            raise CorpusError(f"{where}: {name} are {array.dtype}, expected numbers")
    values = values.astype(np.float64)
    if not np.isfinite(values).all() or not np.isfinite(intervals).all():
        bad = int(np.flatnonzero(~(np.isfinite(values).all(1) & np.isfinite(intervals).all(1)))[0])
        raise CorpusError(f"{where} segment {bad}: non-finite label or interval")
    word_intervals = word_tokens = None
    text_missing = ""
    if words is not None:
        if video in words:
            word_intervals, raw = words.read(video)
            word_tokens = _decode_words(raw, f"{words.path} video {video!r}")
        else:
            text_missing = f"video {video!r} not in {words.path}"
    records = []
    for turn, ((start, end), row) in enumerate(zip(intervals, values)):
        text = ""
        if word_tokens is not None:
            chosen = word_tokens[overlapping_frames(word_intervals, start, end)]
            text = " ".join(w for w in chosen if w.strip() and w.strip() != PAUSE_TOKEN)
        records.append(
            {
                "id": segment_id(video, start, end),
                "split": split,
                "dataset": dataset,
                "dialogue_id": video,
                "speaker": "",
                "text": text,
                "turn": turn,
                "start": float(start),
                "end": float(end),
                "label": None,
                "labels_multi": row[1:].tolist(),
                "sentiment": float(row[0]),
                "video_id": video,
                "audio_path": "",
                "video_path": "",
                "text_missing_reason": text_missing,
            }
        )
    return records


def _decode_words(raw: np.ndarray, where: str) -> np.ndarray:
    flat = raw.reshape(raw.shape[0], -1)
    if flat.shape[1] != 1:
        raise CorpusError(f"{where}: words have shape {raw.shape}, expected (n, 1)")
    out = []
    for i, token in enumerate(flat[:, 0]):
        if isinstance(token, bytes):
            try:
                token = token.decode("utf-8")
            except UnicodeDecodeError as err:
                raise CorpusError(f"{where} word {i}: not UTF-8 ({err})") from err
        out.append(str(token))
    return np.array(out, dtype=object)


def _resolve(root: Path, name: str | Path) -> Path:
    path = Path(name).expanduser()
    return path if path.is_absolute() else root / path


# --------------------------------------------------------------------------- feature loaders


class SegmentFeature(NamedTuple):
    """One table row's cut of a modality: array None when missing, `note` says why."""

    row: int
    array: np.ndarray | None
    note: str
    n_neg_inf: int = 0
    n_pos_inf: int = 0
    n_nan: int = 0


@dataclass
class SegmentFeatures:
    """All rows' cuts of one modality, plus what the cache's provenance needs."""

    modality: MoseiModality
    file: str
    root_name: str
    arrays: list[np.ndarray | None] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    nonfinite_per_row: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    n_neg_inf: int = 0
    n_pos_inf: int = 0
    n_nan: int = 0

    @property
    def n_missing(self) -> int:
        return sum(a is None for a in self.arrays)

    def provenance(self) -> dict[str, Any]:
        return {
            "source_file": self.file,
            "root_name": self.root_name,
            "modality": self.modality.name,
            "dim": self.modality.dim,
            "rate_hz": self.modality.rate_hz,
            "unit": self.modality.unit,
            "segment_rule": "frames whose half-open [s, e) intersects [seg_start, seg_end); no alignment, no padding",
            "nonfinite_replaced_by_zero": {"neg_inf": self.n_neg_inf, "pos_inf": self.n_pos_inf, "nan": self.n_nan},
            "missing_rows": self.n_missing,
        }


def iter_mosei_segment_features(
    root: str | Path, table: UtteranceTable, modality: str, file_name: str | None = None
) -> Iterator[SegmentFeature]:
    """Yield one SegmentFeature per table row, in row order.

    Needs the table's `video_id`, `start` and `end` columns (as `load_mosei_csd` writes them).
    Float modalities come back as float32 (n, dim) with non-finite values set to 0 and counted;
    "words" comes back as a 1-D object array of str, pause tokens included (one per row of the
    words file, like "glove"). Reads one video at a time, so a table grouped by video (the
    adapter's order) reads each video once.
    """
    spec, path = _modality_file(root, table, modality, file_name)
    with ComputationalSequence(path) as csd:
        yield from _cut_segments(csd, table, spec)


def _modality_file(
    root: str | Path, table: UtteranceTable, modality: str, file_name: str | None
) -> tuple[MoseiModality, Path]:
    if modality not in MOSEI_MODALITIES:
        raise CorpusError(f"unknown MOSEI modality {modality!r}; expected one of {sorted(MOSEI_MODALITIES)}")
    if "video_id" not in table.columns:
        raise CorpusError("utterance table has no 'video_id' column; build it with load_mosei_csd")
    spec = MOSEI_MODALITIES[modality]
    return spec, _resolve(Path(root).expanduser().resolve(), file_name or spec.file_name)


def _cut_segments(csd: ComputationalSequence, table: UtteranceTable, spec: MoseiModality) -> Iterator[SegmentFeature]:
    videos, starts, ends = table.columns["video_id"], table.columns["start"], table.columns["end"]
    cached_video: str | None = None
    cached: tuple[np.ndarray, np.ndarray] = (np.zeros((0, 2)), np.zeros((0, spec.dim)))
    for row in range(len(table)):
        video = str(videos[row])
        if video not in csd:
            yield SegmentFeature(row, None, f"video {video!r} not in {csd.path}")
            continue
        if video != cached_video:
            cached_video, cached = video, _checked_video(csd, video, spec)
        intervals, features = cached
        start, end = float(starts[row]), float(ends[row])
        mask = overlapping_frames(intervals, start, end)
        if not mask.any():
            yield SegmentFeature(
                row, None, f"no {spec.name} {spec.unit}s of video {video!r} overlap [{start:.3f}, {end:.3f}) in {csd.path}"
            )
            continue
        cut = features[mask]
        if spec.name == "words":
            yield SegmentFeature(row, _decode_words(cut, f"{csd.path} video {video!r}"), "")
            continue
        cut = cut.astype(np.float32, copy=True)
        neg_inf, pos_inf, nan = np.isneginf(cut), np.isposinf(cut), np.isnan(cut)
        counts = (int(neg_inf.sum()), int(pos_inf.sum()), int(nan.sum()))
        if any(counts):
            cut[neg_inf | pos_inf | nan] = 0.0
        yield SegmentFeature(row, cut, "", *counts)


def _checked_video(csd: ComputationalSequence, video: str, spec: MoseiModality) -> tuple[np.ndarray, np.ndarray]:
    intervals, features = csd.read(video)
    if spec.name == "words":
        return intervals, features
    if features.ndim != 2 or features.shape[1] != spec.dim:
        raise CorpusError(f"{csd.path} video {video!r}: {spec.name} features have shape {features.shape}, expected (n, {spec.dim})")
    if not np.issubdtype(features.dtype, np.number):
        raise CorpusError(f"{csd.path} video {video!r}: {spec.name} features are {features.dtype}, expected numbers")
    return intervals, features


def mosei_feature_arrays(
    root: str | Path, table: UtteranceTable, modality: str, file_name: str | None = None
) -> SegmentFeatures:
    """Every row's cut of `modality` as a list (None = missing) with notes and non-finite counts."""
    spec, path = _modality_file(root, table, modality, file_name)
    result = SegmentFeatures(spec, str(path), "", nonfinite_per_row=np.zeros(len(table), dtype=np.int64))
    with ComputationalSequence(path) as csd:
        result.root_name = csd.root_name
        for item in _cut_segments(csd, table, spec):
            result.arrays.append(item.array)
            result.notes.append(item.note)
            result.nonfinite_per_row[item.row] = item.n_neg_inf + item.n_pos_inf + item.n_nan
            result.n_neg_inf += item.n_neg_inf
            result.n_pos_inf += item.n_pos_inf
            result.n_nan += item.n_nan
    if result.n_missing:
        first_note = next(note for note in result.notes if note)
        log.warning("MOSEI %s: %d of %d segments missing (first: %s)", modality, result.n_missing, len(table), first_note)
    return result


def mosei_dims() -> Mapping[str, dict[str, Any]]:
    """{modality: {"dim", "rate_hz", "unit", "file_name"}} for configs and docs."""
    return {name: {"dim": m.dim, "rate_hz": m.rate_hz, "unit": m.unit, "file_name": m.file_name} for name, m in MOSEI_MODALITIES.items()}
