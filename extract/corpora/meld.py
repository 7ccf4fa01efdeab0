"""MELD adapter: `{train,dev,test}_sent_emo.csv` transcripts plus optional mp4 clips.

Choices made where MELD itself is loose:

- Ids are `"{split}/dia{D}_utt{U}"` and dialogue ids `"{split}/{D}"` because MELD reuses
  dialogue numbers across splits (train dialogue 0 and dev dialogue 0 are different scenes).
- Emotion labels use the fixed order MELD_EMOTIONS (neutral first, then by train frequency, as
  the MELD paper lists them); sentiment negative/neutral/positive becomes -1/0/1.
- StartTime/EndTime ("H:MM:SS,mmm", positions in the Friends episode) become seconds in the
  metadata columns `episode_start`/`episode_end`. The table's own `start`/`end` stay empty
  (NaN = whole file) because stage-1 media loaders read them as offsets into `audio_path` /
  `video_path`, and a MELD clip already is the one utterance: seeking to 976 s in a 5 s clip
  would lose every utterance. The fraction is read as a decimal fraction, so the one train
  row with a two-digit fraction ("00:06:47,28") reads as 407.28 s.
- Empty or whitespace-only utterances are kept: text extraction records them as failures,
  which keeps row order and counts identical to the CSVs. A split CSV without any row (header
  only) is an error naming the file, as is an unbalanced quote (the CSV is read in strict mode).
- A clip absent on disk keeps its row with audio_path/video_path "" and a reason in
  `media_missing_reason` (MELD's own release lacks a few clips, e.g. train dia125_utt3).
  MELD ships audio inside the mp4, so audio_path is the clip itself unless `audio_pattern`
  points at separately extracted audio files.
- Mojibake repair (old MELD copies were round-tripped through Windows-1252, so "’" reads
  "â€™" and, after a second Latin-1 pass, "Â’"): see `repair_mojibake`. No dependency on
  ftfy; the repair is narrow on purpose and every repaired row is counted in the report.
"""
from __future__ import annotations

import csv
import logging
import os
import re
from pathlib import Path
from typing import Any, Iterable, Mapping

from cache_schema.table import UtteranceTable

from . import CorpusError, fold_label, table_from_records

log = logging.getLogger(__name__)

MELD_EMOTIONS = ["neutral", "joy", "surprise", "anger", "sadness", "disgust", "fear"]
MELD_SENTIMENTS = {"negative": -1, "neutral": 0, "positive": 1}
MELD_SPLITS = ("train", "dev", "test")
DEFAULT_SPLIT_DIRS = {"train": "train_splits", "dev": "dev_splits_complete", "test": "output_repeated_splits_test"}
DEFAULT_MEDIA_PATTERN = "{split_dir}/dia{dialogue}_utt{utterance}.mp4"
DEFAULT_CSV_PATTERN = "{split}_sent_emo.csv"
REQUIRED_CSV_COLUMNS = (
    "Utterance", "Speaker", "Emotion", "Sentiment", "Dialogue_ID", "Utterance_ID",
    "Season", "Episode", "StartTime", "EndTime",
)

# Sequences that UTF-8 text decoded as Windows-1252 produces: "Ã"/"Â" lead bytes of Latin-1
# letters and punctuation, "â€" the lead bytes of U+2010..U+203F (quotes, dashes, ellipsis).
_MOJIBAKE_MARKERS = ("â€", "Ã", "Â")
_C1_CONTROLS = re.compile("[\u0080-\u009f]")
_CP1252_HOLES = frozenset("\x81\x8d\x8f\x90\x9d")
_TIME = re.compile(r"^\s*(\d+):(\d{1,2}):(\d{1,2})(?:[,.](\d+))?\s*$")


def repair_mojibake(text: str) -> tuple[str, bool]:
    """Undo UTF-8-read-as-Windows-1252 mojibake; return (text, whether it changed).

    Only strings containing a typical marker are touched, and only when
    `text.encode("cp1252").decode("utf-8")` round-trips without error (cp1252's five unassigned
    bytes included, see `_encode_sloppy_cp1252`), so genuine Latin-1
    text ("Ãngel" followed by ASCII) is left alone. Repeated up to three times for text that
    went through the mis-decoding more than once. A round trip can leave C1 control
    characters (U+0080..U+009F; from a further Latin-1 pass, as in "Â’" -> "\\x92"); those
    have no business in a transcript, so they are read as the Windows-1252 bytes they were.
    """
    original = text
    for _ in range(3):
        if not any(marker in text for marker in _MOJIBAKE_MARKERS):
            break
        try:
            text = _encode_sloppy_cp1252(text).decode("utf-8")
        except UnicodeError:
            break
    if text != original:
        text = _C1_CONTROLS.sub(_c1_as_cp1252, text)
    return text, text != original


def _encode_sloppy_cp1252(text: str) -> bytes:
    """cp1252 encoding that also maps the five bytes cp1252 leaves unassigned (0x81, 0x8D,
    0x8F, 0x90, 0x9D) back from the U+0081.. characters Windows decodes them to; without this
    the closing quote "”" (E2 80 9D), mis-decoded as "â€\x9d", could not be repaired."""
    out = bytearray()
    for char in text:
        if char in _CP1252_HOLES:
            out.append(ord(char))
        else:
            out += char.encode("cp1252")
    return bytes(out)


def _c1_as_cp1252(match: re.Match) -> str:
    try:
        return bytes([ord(match.group())]).decode("cp1252")
    except UnicodeDecodeError:  # 0x81, 0x8d, 0x8f, 0x90, 0x9d are unassigned in cp1252
        return match.group()


def parse_meld_time(value: str) -> float:
    """"HH:MM:SS,mmm" (hours may be one digit) -> seconds; ValueError when malformed."""
    match = _TIME.match(value or "")
    if not match:
        raise ValueError(f"time {value!r} is not H:MM:SS,mmm")
    hours, minutes, seconds, fraction = match.groups()
    if int(minutes) >= 60 or int(seconds) >= 60:
        raise ValueError(f"time {value!r} has minutes or seconds >= 60")
    total = int(hours) * 3600 + int(minutes) * 60 + int(seconds)
    return total + (float("0." + fraction) if fraction else 0.0)


def load_meld(
    root: str,
    splits: Iterable[str] | None = None,
    media_root: str | None = None,
    media_pattern: str = DEFAULT_MEDIA_PATTERN,
    audio_pattern: str | None = None,
    split_dirs: Mapping[str, str] | None = None,
    csv_pattern: str = DEFAULT_CSV_PATTERN,
    repair_text: bool = True,
    dataset: str = "meld",
    media: bool = True,
    report: dict | None = None,
) -> UtteranceTable:
    """Load MELD transcripts (+ media references) as an UtteranceTable.

    root: folder holding `{split}_sent_emo.csv`. splits: which splits to load (default: every
    one of train/dev/test whose CSV exists; a requested split without CSV is an error).
    media_root (default root) + media_pattern locate each clip; pattern fields: split,
    split_dir (from split_dirs, default MELD's folder names), dialogue, utterance.
    audio_pattern: same fields, for separately extracted audio (default: the clip itself).
    repair_text: apply `repair_mojibake` to utterances and speakers.
    media: false says the corpus has no media (text only, e.g. MELD's CSVs without MELD.Raw):
    no clip is looked up, every media path is "" and no "clips not found" summary is logged.
    """
    root_path = Path(root).expanduser().resolve()
    if not root_path.is_dir():
        raise CorpusError(f"MELD root {root_path} is not a folder")
    if not media and (media_root or audio_pattern):
        raise CorpusError(f"MELD root {root_path}: media is false (no media) but {'media_root' if media_root else 'audio_pattern'} is set")
    media_path = Path(media_root).expanduser().resolve() if media_root else root_path
    dirs = dict(DEFAULT_SPLIT_DIRS)
    dirs.update(split_dirs or {})
    for name, pattern in (("media_pattern", media_pattern), ("audio_pattern", audio_pattern)):
        try:
            if pattern is not None:
                pattern.format(split="train", split_dir="train_splits", dialogue=0, utterance=0)
        except (KeyError, IndexError, ValueError) as err:
            raise CorpusError(
                f"MELD {name} {pattern!r}: bad placeholder ({err!r}); use {{split}}, {{split_dir}}, {{dialogue}}, {{utterance}}"
            ) from err

    if splits is None:
        chosen = [s for s in MELD_SPLITS if (root_path / csv_pattern.format(split=s)).is_file()]
        if not chosen:
            names = [csv_pattern.format(split=s) for s in MELD_SPLITS]
            raise CorpusError(f"MELD root {root_path}: none of {names} found")
    else:
        chosen = list(splits)
        for split in chosen:
            if split not in dirs:
                raise CorpusError(f"MELD split {split!r} has no media folder in split_dirs {dirs}")
            csv_file = root_path / csv_pattern.format(split=split)
            if not csv_file.is_file():
                raise CorpusError(f"MELD split {split!r} requested but {csv_file} does not exist")

    records: list[dict[str, Any]] = []
    repaired_ids: list[str] = []
    for split in chosen:
        csv_file = root_path / csv_pattern.format(split=split)
        records.extend(
            _read_split(csv_file, split, dirs[split], media_path, media_pattern, audio_pattern, repair_text, dataset, repaired_ids, media)
        )

    missing_media = sum(1 for r in records if r["media_missing_reason"])
    if repaired_ids:
        log.info("MELD: repaired mojibake in %d rows (first: %s)", len(repaired_ids), repaired_ids[:5])
    if not media:
        log.info("MELD: corpus.media is false: text only, no clips looked up")
    elif missing_media:
        log.warning("MELD: %d of %d clips not found under %s", missing_media, len(records), media_path)
    if report is not None:
        report.update(
            {
                "kind": "meld",
                "splits": chosen,
                "rows": len(records),
                "mojibake_repaired_rows": len(repaired_ids),
                "mojibake_repaired_ids": repaired_ids,
                "media": bool(media),
                "media_missing": missing_media,
                "empty_text_rows": sum(1 for r in records if not r["text"].strip()),
            }
        )
    return table_from_records(str(root_path), records, MELD_EMOTIONS)


def _read_split(
    csv_file: Path,
    split: str,
    split_dir: str,
    media_path: Path,
    media_pattern: str,
    audio_pattern: str | None,
    repair_text: bool,
    dataset: str,
    repaired_ids: list[str],
    media: bool = True,
) -> list[dict[str, Any]]:
    try:
        with open(csv_file, encoding="utf-8-sig", newline="") as handle:
            # strict: an unbalanced quote is named as such, not discovered later as empty cells
            reader = csv.DictReader(handle, strict=True)
            header = reader.fieldnames or []
            missing = [c for c in REQUIRED_CSV_COLUMNS if c not in header]
            if missing:
                raise CorpusError(f"{csv_file}: missing column(s) {missing}; header is {header}")
            rows = []
            while True:
                first_line = reader.line_num + 1
                try:
                    rows.append(next(reader))
                except StopIteration:
                    break
                except csv.Error as err:
                    problem = ("a quoted field opened in this record is never closed"
                               if "unexpected end of data" in str(err) else "unreadable CSV")
                    raise CorpusError(f"{csv_file} line {first_line}: {problem} (csv: {err})") from err
    except UnicodeDecodeError as err:
        raise CorpusError(f"{csv_file}: not valid UTF-8 ({err})") from err
    except csv.Error as err:
        raise CorpusError(f"{csv_file}: unreadable CSV ({err})") from err
    if not rows:
        raise CorpusError(f"{csv_file}: no utterances (header row only)")

    records = []
    seen: dict[str, int] = {}
    for line_no, row in enumerate(rows, start=2):  # line 1 is the header
        where = f"{csv_file} row {line_no}"
        try:
            dialogue = int(row["Dialogue_ID"])
            utterance = int(row["Utterance_ID"])
        except (TypeError, ValueError) as err:
            raise CorpusError(f"{where}: Dialogue_ID/Utterance_ID must be integers ({err})") from err
        utt_id = f"{split}/dia{dialogue}_utt{utterance}"
        where = f"{csv_file} row {line_no} ({utt_id})"
        if utt_id in seen:
            raise CorpusError(f"{where}: duplicate utterance id, first seen on row {seen[utt_id]}")
        seen[utt_id] = line_no

        emotion = fold_label(row["Emotion"] or "")
        if emotion not in MELD_EMOTIONS:
            raise CorpusError(f"{where}: emotion {row['Emotion']!r} is not one of {MELD_EMOTIONS}")
        sentiment = (row["Sentiment"] or "").strip().lower()
        if sentiment not in MELD_SENTIMENTS:
            raise CorpusError(f"{where}: sentiment {row['Sentiment']!r} is not one of {list(MELD_SENTIMENTS)}")
        try:
            start = parse_meld_time(row["StartTime"])
            end = parse_meld_time(row["EndTime"])
            season = float(row["Season"]) if (row["Season"] or "").strip() else None
            episode = float(row["Episode"]) if (row["Episode"] or "").strip() else None
        except ValueError as err:
            raise CorpusError(f"{where}: {err}") from err

        text = row["Utterance"] or ""
        speaker = row["Speaker"] or ""
        if repair_text:
            text, text_fixed = repair_mojibake(text)
            speaker, speaker_fixed = repair_mojibake(speaker)
            if text_fixed or speaker_fixed:
                repaired_ids.append(utt_id)

        fields = {"split": split, "split_dir": split_dir, "dialogue": dialogue, "utterance": utterance}
        video = media_path / media_pattern.format(**fields)
        audio = media_path / audio_pattern.format(**fields) if audio_pattern else video
        reasons = []
        if media and not os.path.isfile(video):
            reasons.append(f"clip not found: {video}")
        if media and audio_pattern and not os.path.isfile(audio):
            reasons.append(f"audio not found: {audio}")
        records.append(
            {
                "id": utt_id,
                "split": split,
                "dataset": dataset,
                "dialogue_id": f"{split}/{dialogue}",
                "speaker": speaker,
                "text": text,
                "turn": utterance,
                "start": None,  # the clip is the utterance (see module docstring)
                "end": None,
                "label": emotion,
                "sentiment": MELD_SENTIMENTS[sentiment],
                "audio_path": str(audio) if media and os.path.isfile(audio) else "",
                "video_path": str(video) if media and os.path.isfile(video) else "",
                "media_missing_reason": "; ".join(reasons),
                "season": season,
                "episode": episode,
                "episode_start": start,
                "episode_end": end,
            }
        )
    return records
