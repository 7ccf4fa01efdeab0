"""Audio-folder adapter: a folder of audio files whose names encode speaker and label (EmoDB).

Each file's stem is matched (`re.fullmatch`) against `pattern`, a Python regex with named
groups. Groups with special meaning: `speaker` -> speaker column, `label` -> a code mapped to
a class name through `label_map`. Every other named group (EmoDB: text_id, version) becomes
a string metadata column. The utterance id is the file stem (ids must be unique, so two files
with one stem in different subfolders are an error).

Everything goes to split "train" by default: speaker-independent folds are the trainer's job,
and fixing a held-out speaker here would silently bake one fold into the cache. `split_by`
maps the values of one group to splits when a fixed split is wanted, e.g.
`{"speaker": {"03": "test", "08": "dev"}}` (unlisted values -> default_split).

Text is "" (EmoDB's ten sentences are neutral by design and carry no label signal; text
extraction records the rows as having no text). start/end are empty: the whole file is the
utterance.
"""
from __future__ import annotations

import logging
import re
from collections import Counter
from pathlib import Path
from typing import Any, Iterable, Mapping

from cache_schema.table import REQUIRED_COLUMNS, UtteranceTable

from . import CorpusError, fold_label, fold_label_names, table_from_records

log = logging.getLogger(__name__)

SPLITS = ("train", "dev", "test")
DEFAULT_GLOB = "**/*.wav"

# EmoDB file names: SS speaker, TTT text id, E emotion letter, V version (e.g. 03a01Fa.wav).
EMODB_PRESET: dict[str, Any] = {
    "glob": DEFAULT_GLOB,
    "pattern": r"^(?P<speaker>\d\d)(?P<text_id>[a-z]\d\d)(?P<label>[A-Z])(?P<version>[a-z])$",
    "label_map": {
        "W": "anger",
        "L": "boredom",
        "E": "disgust",
        "A": "fear",
        "F": "happiness",
        "T": "sadness",
        "N": "neutral",
    },
    "dataset": "emodb",
}
PRESETS: dict[str, dict[str, Any]] = {"emodb": EMODB_PRESET}
# Groups that fill table columns; other groups must not collide with the table's own columns.
_SPECIAL_GROUPS = ("speaker", "label")
_WRITTEN_COLUMNS = set(REQUIRED_COLUMNS) | {"audio_path", "video_path"}


def load_audio_folder(
    root: str,
    glob: str | None = None,
    pattern: str | None = None,
    label_map: Mapping[str, str] | None = None,
    label_names: Iterable[str] | None = None,
    split_by: Mapping[str, Mapping[str, str]] | None = None,
    default_split: str = "train",
    on_unmatched: str = "error",
    dataset: str | None = None,
    preset: str | None = None,
    report: dict | None = None,
) -> UtteranceTable:
    """One row per audio file under `root` matching `glob` (default "**/*.wav").

    preset: "emodb" fills glob/pattern/label_map/dataset from EMODB_PRESET; options given
    explicitly override the preset's. pattern: regex over the file stem (None = no parsing:
    no speaker, no label). label_map: code -> class name (None = codes are the names).
    label_names: class order (default: label_map's values in order, else sorted codes).
    on_unmatched: "error" (default) or "skip" (listed in the report and the log).
    """
    if preset is not None:
        if preset not in PRESETS:
            raise CorpusError(f"unknown audio_folder preset {preset!r}; known: {sorted(PRESETS)}")
        defaults = PRESETS[preset]
        glob = glob if glob is not None else defaults.get("glob")
        pattern = pattern if pattern is not None else defaults.get("pattern")
        label_map = label_map if label_map is not None else defaults.get("label_map")
        dataset = dataset if dataset is not None else defaults.get("dataset")
    glob = glob or DEFAULT_GLOB
    if on_unmatched not in ("error", "skip"):
        raise CorpusError(f"on_unmatched must be 'error' or 'skip', got {on_unmatched!r}")
    if default_split not in SPLITS:
        raise CorpusError(f"default_split must be one of {SPLITS}, got {default_split!r}")
    root_path = Path(root).expanduser().resolve()
    if not root_path.is_dir():
        raise CorpusError(f"audio folder {root_path} is not a folder")

    regex = _compile(pattern)
    groups = list(regex.groupindex) if regex else []
    clashing = [g for g in groups if g not in _SPECIAL_GROUPS and g in _WRITTEN_COLUMNS]
    if clashing:
        raise CorpusError(f"pattern group(s) {clashing} clash with table columns; rename them")
    split_group, split_of = _split_rule(split_by, groups)
    names = _label_names(label_map, label_names)

    files = sorted(p for p in root_path.glob(glob) if p.is_file())
    if not files:
        raise CorpusError(f"audio folder {root_path}: no files match {glob!r}")

    records: list[dict[str, Any]] = []
    skipped: list[str] = []
    first_path: dict[str, Path] = {}
    found_codes: set[str] = set()
    split_values_seen: set[str] = set()
    for file in files:
        fields: dict[str, str] = {}
        if regex is not None:
            match = regex.fullmatch(file.stem)
            if match is None:
                if on_unmatched == "error":
                    raise CorpusError(f"{file}: file name {file.stem!r} does not match pattern {pattern!r}")
                skipped.append(str(file))
                continue
            fields = {k: (v or "") for k, v in match.groupdict().items()}
        if file.stem in first_path:
            raise CorpusError(f"{file}: utterance id {file.stem!r} is also the stem of {first_path[file.stem]}")
        first_path[file.stem] = file

        label = None
        code = fields.get("label", "")
        if code:
            found_codes.add(code)
            label = label_map.get(code) if label_map is not None else code
            if label is None:
                raise CorpusError(f"{file}: label code {code!r} is not in label_map {dict(label_map)}")
            label = fold_label(label)
        split = default_split
        if split_group is not None:
            split_values_seen.add(fields.get(split_group, ""))
            split = split_of.get(fields.get(split_group, ""), default_split)
        record: dict[str, Any] = {
            "id": file.stem,
            "split": split,
            "dataset": dataset if dataset is not None else root_path.name,
            "dialogue_id": "",
            "speaker": fields.get("speaker", ""),
            "text": "",
            "turn": None,
            "start": None,
            "end": None,
            "label": label,
            "audio_path": str(file),
            "video_path": "",
        }
        record.update({k: v for k, v in fields.items() if k not in _SPECIAL_GROUPS})
        records.append(record)

    if not records:
        raise CorpusError(f"audio folder {root_path}: all {len(files)} files were skipped as unmatched by {pattern!r}")
    if split_group is not None:  # a typo'd value (or YAML's 03 -> 3) would silently move nothing
        unused = sorted(set(split_of) - split_values_seen)
        if unused:
            raise CorpusError(
                f"split_by {split_group!r}: value(s) {unused} match no file (values found: {sorted(split_values_seen)[:20]})"
            )
    if names is None:  # no label_map: the codes themselves, sorted
        names = fold_label_names(sorted(found_codes), f"audio folder {root_path}: label codes")
    unknown = sorted({r["label"] for r in records if r["label"] is not None and r["label"] not in names})
    if unknown:
        raise CorpusError(f"audio folder {root_path}: labels {unknown} are not in label_names {names}")
    if skipped:
        log.warning("audio folder %s: skipped %d files not matching %r (first: %s)", root_path, len(skipped), pattern, skipped[:3])
    if report is not None:
        report.update(
            {
                "kind": "audio_folder",
                "root": str(root_path),
                "rows": len(records),
                "skipped_unmatched": skipped,
                "speakers": sorted({r["speaker"] for r in records if r["speaker"]}),
                "label_counts": dict(Counter(r["label"] for r in records if r["label"] is not None)),
            }
        )
    return table_from_records(str(root_path), records, names)


def _compile(pattern: str | None) -> re.Pattern | None:
    if pattern is None:
        return None
    try:
        return re.compile(pattern)
    except re.error as err:
        raise CorpusError(f"pattern {pattern!r} is not a valid regular expression ({err})") from err


def _split_rule(split_by: Mapping[str, Mapping[str, str]] | None, groups: list[str]) -> tuple[str | None, dict[str, str]]:
    if not split_by:
        return None, {}
    if len(split_by) != 1:
        raise CorpusError(f"split_by must name exactly one pattern group, got {list(split_by)}")
    group, mapping = next(iter(split_by.items()))
    if group not in groups:
        raise CorpusError(f"split_by group {group!r} is not a named group of the pattern (groups: {groups})")
    bad = {value: split for value, split in mapping.items() if split not in SPLITS}
    if bad:
        raise CorpusError(f"split_by {group!r}: splits must be one of {SPLITS}, got {bad}")
    return group, {str(value): split for value, split in mapping.items()}


def _label_names(label_map: Mapping[str, str] | None, label_names: Iterable[str] | None) -> list[str] | None:
    if label_names is not None:
        names = [str(n) for n in label_names]
        if len(set(names)) != len(names):
            raise CorpusError(f"label_names has duplicates: {names}")
        return fold_label_names(names, "audio folder option label_names")
    if label_map is not None:
        return list(dict.fromkeys(fold_label(v) for v in label_map.values()))
    return None
