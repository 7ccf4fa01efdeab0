"""Generic manifest adapter: one utterance per CSV row or JSONL line.

Recognised columns (only `id` is required):

    id        unique utterance id
    text      transcript ("" when none; text extraction records it as missing)
    audio     path of the audio file, relative paths resolve against the manifest's folder
    video     path of the video file, likewise
    start/end seconds within the media file (empty = whole file)
    label     one class name per row               -> `label` (index into label_names)
    labels    several names: "a;b" or a JSON list  -> `labels_multi` as 0/1 over label_names
              (an empty cell means "not annotated" (NaN); "[]" means "annotated, none present")
    sentiment a number
    speaker, dialogue (-> dialogue_id), turn (an integer), split (train/dev/test)

Every other column is kept as a metadata column: numeric when every non-empty value parses
as a number, else string. Columns that would clash with columns the adapter writes itself
(dataset, dialogue_id, labels_multi, audio_path, video_path, media_missing_reason) are an
error rather than being silently overwritten.

The format is chosen by extension: .csv (comma), .tsv (tab), .jsonl/.ndjson (one JSON object
per line, blank lines skipped). Files are read as UTF-8 (a BOM is accepted). CSV is parsed in
the csv module's strict mode: an unbalanced quote is an error naming the line where the record
starts, never a cell that silently swallows the rest of the file.
"""
from __future__ import annotations

import csv
import json
import logging
import math
import os
from pathlib import Path
from typing import Any, Iterable

from cache_schema.table import REQUIRED_COLUMNS, UtteranceTable

from . import CorpusError, fold_label, fold_label_names, table_from_records

log = logging.getLogger(__name__)

SPLITS = ("train", "dev", "test")
KNOWN_COLUMNS = ("id", "text", "audio", "video", "start", "end", "label", "labels", "sentiment",
                 "speaker", "dialogue", "turn", "split")
WRITTEN_COLUMNS = ("audio_path", "video_path", "media_missing_reason")
RESERVED_COLUMNS = tuple(sorted((set(REQUIRED_COLUMNS) | set(WRITTEN_COLUMNS)) - set(KNOWN_COLUMNS)))
_INT32 = (-(2**31), 2**31 - 1)


def load_manifest(
    path: str,
    label_names: Iterable[str] | None = None,
    unknown_labels: str = "error",
    default_split: str = "train",
    missing_media: str = "error",
    dataset: str | None = None,
    report: dict | None = None,
) -> UtteranceTable:
    """Load a CSV/TSV/JSONL manifest as an UtteranceTable.

    label_names: the class names, in index order; default = the sorted set of names found.
    unknown_labels: "error" (default), "drop" (drop the row) or "ignore" (keep the row without
    that label), for names outside label_names.
    default_split: used when the file has no `split` column (an empty cell in an existing
    split column is an error).
    missing_media: "error" (default) when an audio/video file does not exist, or "record":
    keep the row with the path "" and the reason in `media_missing_reason`.
    dataset: value of the `dataset` column (default: the manifest's file stem).
    """
    manifest = Path(path).expanduser().resolve()
    if unknown_labels not in ("error", "drop", "ignore"):
        raise CorpusError(f"unknown_labels must be 'error', 'drop' or 'ignore', got {unknown_labels!r}")
    if missing_media not in ("error", "record"):
        raise CorpusError(f"missing_media must be 'error' or 'record', got {missing_media!r}")
    if default_split not in SPLITS:
        raise CorpusError(f"default_split must be one of {SPLITS}, got {default_split!r}")
    rows, columns = _read_rows(manifest)
    if "id" not in columns:
        raise CorpusError(f"{manifest}: required column 'id' is missing; columns are {columns}")
    clashing = [c for c in columns if c in RESERVED_COLUMNS]
    if clashing:
        raise CorpusError(f"{manifest}: column(s) {clashing} are written by the adapter; rename them (e.g. 'dialogue' for dialogue ids)")
    if not rows:
        raise CorpusError(f"{manifest}: no utterances")

    parsed = [_parse_row(manifest, where, row) for where, row in rows]
    _check_unique_ids(manifest, parsed)

    if label_names is None:
        found = {p["label"] for p in parsed if p["label"]} | {n for p in parsed for n in (p["labels"] or [])}
        names = sorted(found)
    else:
        names = [str(n) for n in label_names]
        if len(set(names)) != len(names):
            raise CorpusError(f"label_names has duplicates: {names}")
        names = fold_label_names(names, f"{manifest}: option label_names")
    known = set(names)
    multi_names = names if "labels" in columns else []
    extra_columns = [c for c in columns if c not in KNOWN_COLUMNS]
    numeric_extras = {c for c in extra_columns if _all_numeric(p["extra"].get(c) for p in parsed)}
    base = manifest.parent
    records: list[dict[str, Any]] = []
    dropped: list[str] = []
    ignored = 0
    for p in parsed:
        where = f"{manifest} {p['where']} (id {p['id']!r})"
        if "split" in columns and p["split"] not in SPLITS:
            raise CorpusError(f"{where}: split {p['split']!r} is not one of {SPLITS}")
        label = p["label"]
        multi = p["labels"]
        unknown = ([label] if label and label not in known else []) + [n for n in (multi or []) if n not in known]
        if unknown:
            if unknown_labels == "error":
                raise CorpusError(f"{where}: unknown label(s) {unknown}; label_names are {names}")
            if unknown_labels == "drop":
                dropped.append(p["id"])
                continue
            ignored += len(unknown)
            label = label if label in known else None
            multi = [n for n in multi if n in known] if multi is not None else None
        record: dict[str, Any] = {
            "id": p["id"],
            "split": p["split"] if "split" in columns else default_split,
            "dataset": dataset if dataset is not None else manifest.stem,
            "dialogue_id": p["dialogue"],
            "speaker": p["speaker"],
            "text": p["text"],
            "turn": p["turn"],
            "start": p["start"],
            "end": p["end"],
            "label": label,
            "labels_multi": [1.0 if n in multi else 0.0 for n in multi_names] if multi is not None else None,
            "sentiment": p["sentiment"],
        }
        reasons = []
        for kind in ("audio", "video"):
            media = _resolve_media(base, p[kind])
            if media and not os.path.isfile(media):
                if missing_media == "error":
                    raise CorpusError(f"{where}: {kind} file {media} does not exist")
                reasons.append(f"{kind} not found: {media}")
                media = ""
            record[f"{kind}_path"] = media
        record["media_missing_reason"] = "; ".join(reasons)
        for column in extra_columns:
            value = p["extra"].get(column)
            record[column] = _to_float(value) if column in numeric_extras else _to_text(value)
        records.append(record)

    if not records:
        raise CorpusError(f"{manifest}: every row was dropped for unknown labels (label_names {names})")
    if dropped:
        log.warning("%s: dropped %d rows with labels outside %s", manifest, len(dropped), names)
    if report is not None:
        report.update(
            {
                "kind": "manifest",
                "path": str(manifest),
                "rows": len(records),
                "label_names": names,
                "dropped_unknown_label_rows": dropped,
                "ignored_unknown_labels": ignored,
                "media_missing": sum(1 for r in records if r["media_missing_reason"]),
            }
        )
    return table_from_records(str(manifest), records, names, multi_names)


# --------------------------------------------------------------------------- reading


def _read_rows(manifest: Path) -> tuple[list[tuple[str, dict[str, Any]]], list[str]]:
    """[(where, {column: raw value})], columns in first-seen order."""
    suffix = manifest.suffix.lower()
    if suffix not in (".csv", ".tsv", ".jsonl", ".ndjson"):
        raise CorpusError(f"{manifest}: unknown manifest format {suffix!r}; use .csv, .tsv, .jsonl or .ndjson")
    try:
        with open(manifest, encoding="utf-8-sig", newline="") as handle:
            if suffix in (".csv", ".tsv"):
                return _read_csv(manifest, handle, "\t" if suffix == ".tsv" else ",")
            return _read_jsonl(manifest, handle)
    except FileNotFoundError as err:
        raise CorpusError(f"{manifest}: manifest file does not exist") from err
    except UnicodeDecodeError as err:
        raise CorpusError(f"{manifest}: not valid UTF-8 ({err})") from err
    except csv.Error as err:
        raise CorpusError(f"{manifest}: unreadable CSV ({err})") from err
    except OSError as err:
        raise CorpusError(f"{manifest}: cannot read ({err})") from err


def _read_csv(manifest: Path, handle, delimiter: str):
    # strict: an unbalanced quote is an error ("unexpected end of data") instead of a quoted
    # cell that silently swallows every following row.
    reader = csv.reader(handle, delimiter=delimiter, strict=True)
    records = _csv_records(manifest, reader)
    header = next(records, None)
    if header is None:
        raise CorpusError(f"{manifest}: empty file, expected a header row")
    if any(not name.strip() for name in header):
        raise CorpusError(f"{manifest}: header has an empty column name: {header}")
    duplicates = sorted({name for name in header if header.count(name) > 1})
    if duplicates:
        raise CorpusError(f"{manifest}: duplicate column name(s) {duplicates}")
    rows = []
    for fields in records:
        where = f"line {reader.line_num}"
        if not fields or (len(fields) == 1 and not fields[0].strip() and len(header) > 1):
            continue  # blank line
        if len(fields) > len(header):
            raise CorpusError(f"{manifest} {where}: {len(fields)} fields but the header has {len(header)}")
        rows.append((where, dict(zip(header, fields))))
    return rows, list(header)


def _csv_records(manifest: Path, reader):
    """The reader's records; a csv.Error becomes a CorpusError naming the line the record starts on."""
    while True:
        first_line = reader.line_num + 1
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as err:
            problem = ("a quoted field opened in this record is never closed" if "unexpected end of data" in str(err)
                       else "unreadable CSV")
            raise CorpusError(f"{manifest} line {first_line}: {problem} (csv: {err})") from err
        yield fields


def _read_jsonl(manifest: Path, handle):
    rows, columns = [], []
    for line_no, line in enumerate(handle, start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except (json.JSONDecodeError, RecursionError) as err:
            raise CorpusError(f"{manifest} line {line_no}: invalid JSON ({err})") from err
        if not isinstance(obj, dict):
            raise CorpusError(f"{manifest} line {line_no}: expected a JSON object, got {type(obj).__name__}")
        columns.extend(k for k in obj if k not in columns)
        rows.append((f"line {line_no}", obj))
    return rows, columns


# --------------------------------------------------------------------------- parsing cells


def _parse_row(manifest: Path, where: str, row: dict[str, Any]) -> dict[str, Any]:
    at = f"{manifest} {where}"
    identifier = _text(row.get("id"), at, "id")
    if not identifier.strip():
        raise CorpusError(f"{at}: column 'id' is empty")
    at = f"{manifest} {where} (id {identifier!r})"
    label = fold_label(_text(row.get("label"), at, "label")) or None  # case-insensitive: Joy == joy
    return {
        "where": where,
        "id": identifier,
        "text": _text(row.get("text"), at, "text"),
        "audio": _text(row.get("audio"), at, "audio").strip(),
        "video": _text(row.get("video"), at, "video").strip(),
        "start": _number(row.get("start"), at, "start"),
        "end": _number(row.get("end"), at, "end"),
        "sentiment": _number(row.get("sentiment"), at, "sentiment"),
        "label": label,
        "labels": _label_list(row["labels"], at) if "labels" in row else None,
        "speaker": _text(row.get("speaker"), at, "speaker"),
        "dialogue": _text(row.get("dialogue"), at, "dialogue"),
        "turn": _turn(row.get("turn"), at),
        "split": _text(row.get("split"), at, "split"),
        "extra": {k: v for k, v in row.items() if k not in KNOWN_COLUMNS},
    }


def _text(value: Any, at: str, column: str) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    raise CorpusError(f"{at}: column {column!r} must be text, got {type(value).__name__} {value!r}")


def _number(value: Any, at: str, column: str) -> float | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise CorpusError(f"{at}: column {column!r} must be a number, got {value!r}")
    try:
        return float(value)
    except (ValueError, OverflowError) as err:
        raise CorpusError(f"{at}: column {column!r} must be a number, got {value!r}") from err


def _turn(value: Any, at: str) -> int | None:
    number = _number(value, at, "turn")
    if number is None:
        return None
    if not math.isfinite(number) or number != int(number) or not _INT32[0] <= number <= _INT32[1]:
        raise CorpusError(f"{at}: column 'turn' must be an integer (32-bit), got {value!r}")
    return int(number)


def _label_list(value: Any, at: str) -> list[str] | None:
    """"a;b" or a JSON list (a real list in JSONL) -> names; empty cell -> None (not annotated)."""
    if value is None:
        return None
    if isinstance(value, str):
        stripped = value.strip()
        if not stripped:
            return None
        if stripped.startswith("["):
            try:
                value = json.loads(stripped)
            except (json.JSONDecodeError, RecursionError) as err:
                raise CorpusError(f"{at}: column 'labels' looks like JSON but is not ({err})") from err
        else:
            return [fold_label(part) for part in stripped.split(";") if part.strip()]
    if not isinstance(value, list) or not all(isinstance(n, str) for n in value):
        raise CorpusError(f"{at}: column 'labels' must be 'a;b' or a list of names, got {value!r}")
    return [fold_label(n) for n in value if n.strip()]


def _check_unique_ids(manifest: Path, parsed: list[dict[str, Any]]) -> None:
    first: dict[str, str] = {}
    duplicates: list[str] = []
    for p in parsed:
        if p["id"] in first:
            duplicates.append(f"{p['id']!r} ({first[p['id']]} and {p['where']})")
        else:
            first[p["id"]] = p["where"]
    if duplicates:
        raise CorpusError(f"{manifest}: duplicate id(s): {', '.join(duplicates[:10])}" + (" ..." if len(duplicates) > 10 else ""))


def _resolve_media(base: Path, value: str) -> str:
    """Absolute path string ("" stays ""); string operations only, no file-system access."""
    if not value:
        return ""
    return os.path.abspath(os.path.join(base, os.path.expanduser(value)))


def _all_numeric(values: Iterable[Any]) -> bool:
    seen_number = False
    for value in values:
        if value is None or (isinstance(value, str) and not value.strip()):
            continue
        if _to_float(value) is None:
            return False
        seen_number = True
    return seen_number


def _to_float(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        try:
            return float(value)
        except OverflowError:
            return None
    if isinstance(value, str) and value.strip():
        try:
            return float(value)
        except ValueError:
            return None
    return None


def _to_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False)
