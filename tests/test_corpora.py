"""Stage-1 corpus adapters (extract/corpora): MELD, CMU-MOSEI .csd, manifests, EmoDB folders."""
from __future__ import annotations

import collections
import csv
import functools
import json
from pathlib import Path

import h5py
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from extract.corpora import (
    EMODB_PRESET,
    MELD_EMOTIONS,
    MOSEI_EMOTIONS,
    MOSEI_MODALITIES,
    CorpusError,
    hash_split,
    iter_mosei_segment_features,
    load_audio_folder,
    load_corpus,
    load_manifest,
    load_meld,
    load_mosei_csd,
    mosei_feature_arrays,
    repair_mojibake,
)
from extract.corpora.mosei import segment_id

MELD_HEADER = ["Sr No.", "Utterance", "Speaker", "Emotion", "Sentiment", "Dialogue_ID", "Utterance_ID",
               "Season", "Episode", "StartTime", "EndTime"]


# --------------------------------------------------------------------------- dispatch


def test_load_corpus_rejects_unknown_kind_option_and_missing_option(tmp_path):
    with pytest.raises(CorpusError, match="unknown kind 'iemocap'"):
        load_corpus({"kind": "iemocap", "root": str(tmp_path)})
    with pytest.raises(CorpusError, match=r"unknown option\(s\) \['rot'\]"):
        load_corpus({"kind": "meld", "rot": str(tmp_path)})
    with pytest.raises(CorpusError, match=r"missing required option\(s\) \['root'\]"):
        load_corpus({"kind": "audio_folder"})


# --------------------------------------------------------------------------- MELD


@functools.lru_cache(maxsize=None)
def _meld(root: str):
    """MELD parsed once per test session (the tables are read-only in these tests)."""
    report: dict = {}
    table = load_corpus({"kind": "meld", "root": root}, report=report)
    return table, report


@pytest.fixture
def meld_table(meld_dir):
    return _meld(str(meld_dir))


def test_meld_real_csvs(meld_table):
    table, report = meld_table
    split = table.columns["split"]
    assert (split == "train").sum() == 9989 and (split == "dev").sum() == 1109
    assert table.label_names == MELD_EMOTIONS
    train_labels = table.columns["label"][split == "train"]
    counts = [int((train_labels == i).sum()) for i in range(len(MELD_EMOTIONS))]
    assert counts == [4710, 1743, 1205, 1109, 683, 271, 268]
    assert len(set(table.ids)) == len(table)
    assert table.ids[0] == "train/dia0_utt0"
    assert len(set(table.columns["dialogue_id"][split == "train"])) == 1038
    assert len(set(table.columns["dialogue_id"][split == "dev"])) == 114
    sentiment = table.columns["sentiment"][split == "train"]
    assert collections.Counter(sentiment.tolist()) == {0.0: 4710, -1.0: 2945, 1.0: 2334}
    # first train row: "00:16:16,059" -> "00:16:21,731", Chandler, season 8 episode 21
    assert table.columns["episode_start"][0] == pytest.approx(976.059)
    assert table.columns["episode_end"][0] == pytest.approx(981.731)
    # the clip is the utterance: no offsets into the media file
    assert np.isnan(table.columns["start"]).all() and np.isnan(table.columns["end"]).all()
    assert table.columns["speaker"][0] == "Chandler"
    assert table.columns["season"][0] == 8 and table.columns["episode"][0] == 21
    assert "company’s transition" in table.columns["text"][0]  # typographic quote survives
    # the one two-digit fraction in train ("00:06:47,28") reads as a decimal fraction
    row = list(table.ids).index("train/dia437_utt2")
    assert table.columns["episode_end"][row] == pytest.approx(407.28)
    assert report["mojibake_repaired_rows"] == 0  # this copy is clean UTF-8


def test_meld_media_missing_is_recorded_not_dropped(meld_table, meld_dir):
    table, report = meld_table
    assert report["media_missing"] == len(table)
    assert (table.columns["video_path"] == "").all() and (table.columns["audio_path"] == "").all()
    reason = table.columns["media_missing_reason"][0]
    assert reason == f"clip not found: {Path(meld_dir).resolve() / 'train_splits' / 'dia0_utt0.mp4'}"


def test_meld_media_found_under_media_root(meld_dir, tmp_path):
    clip = tmp_path / "dev_splits_complete" / "dia0_utt1.mp4"
    clip.parent.mkdir()
    clip.write_bytes(b"")
    table = load_meld(str(meld_dir), splits=["dev"], media_root=str(tmp_path))
    assert len(table) == 1109
    row = list(table.ids).index("dev/dia0_utt1")
    assert table.columns["video_path"][row] == str(clip) == table.columns["audio_path"][row]
    assert table.columns["media_missing_reason"][row] == ""
    assert (table.columns["media_missing_reason"] != "").sum() == 1108


def test_meld_requested_split_without_csv_is_an_error(meld_dir):
    with pytest.raises(CorpusError, match="test_sent_emo.csv does not exist"):
        load_meld(str(meld_dir), splits=["train", "test"])


def test_repair_mojibake_synthetic():
    assert repair_mojibake("Oh my God, heâ€™s lost it.") == ("Oh my God, he’s lost it.", True)
    assert repair_mojibake("heÂ’s") == ("he’s", True)  # double pass through cp1252/latin-1
    assert repair_mojibake("â€œYesâ€\x9d") == ("“Yes”", True)
    assert repair_mojibake("CafÃ© au lait") == ("Café au lait", True)
    # genuine text with a marker-like letter whose round trip fails is left alone
    assert repair_mojibake("Ãngel and Â!") == ("Ãngel and Â!", False)
    assert repair_mojibake("plain he’s") == ("plain he’s", False)


def _write_meld_csv(path: Path, rows: list[list[str]]) -> None:
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\r\n")
        writer.writerow(MELD_HEADER)
        writer.writerows(rows)


def test_meld_repairs_and_counts_mojibake_keeps_empty_text(tmp_path):
    _write_meld_csv(
        tmp_path / "dev_sent_emo.csv",
        [
            ["1", "heâ€™s fine", "Joey", "joy", "positive", "3", "0", "1", "2", "0:00:01,000", "0:00:02,500"],
            ["2", "   ", "Ross", "fear", "negative", "3", "1", "1", "2", "0:00:02,500", "0:00:03,000"],
            ["3", "ok", "MonicaÂ’s mom", "neutral", "neutral", "3", "2", "1", "2", "0:00:03,000", "0:00:04,000"],
        ],
    )
    report: dict = {}
    table = load_meld(str(tmp_path), report=report)
    assert report["splits"] == ["dev"]
    assert report["mojibake_repaired_rows"] == 2
    assert report["mojibake_repaired_ids"] == ["dev/dia3_utt0", "dev/dia3_utt2"]
    assert report["empty_text_rows"] == 1
    assert list(table.columns["text"]) == ["he’s fine", "   ", "ok"]
    assert table.columns["speaker"][2] == "Monica’s mom"
    assert list(table.columns["label"]) == [1, 6, 0]
    assert list(table.columns["sentiment"]) == [1, -1, 0]
    assert list(table.columns["turn"]) == [0, 1, 2]
    assert table.columns["dialogue_id"][0] == "dev/3"
    unrepaired = load_meld(str(tmp_path), repair_text=False)
    assert unrepaired.columns["text"][0] == "heâ€™s fine"


@pytest.mark.parametrize(
    "column, value, message",
    [(3, "happy", r"row 2 \(dev/dia0_utt0\): emotion 'happy'"), (9, "1:2", "time '1:2'"), (5, "x", "row 2: Dialogue_ID")],
)
def test_meld_bad_values_name_file_and_row(tmp_path, column, value, message):
    row = ["1", "hi", "Joey", "joy", "positive", "0", "0", "1", "2", "0:00:01,000", "0:00:02,500"]
    row[column] = value
    _write_meld_csv(tmp_path / "dev_sent_emo.csv", [row])
    with pytest.raises(CorpusError, match=message) as info:
        load_meld(str(tmp_path))
    assert "dev_sent_emo.csv" in str(info.value)


# --------------------------------------------------------------------------- CMU-MOSEI


@functools.lru_cache(maxsize=None)
def _mosei(root: str):
    return load_mosei_csd(root)


@pytest.fixture
def mosei_dir(mini_mosei_dir):
    return mini_mosei_dir


@pytest.fixture
def mosei_table(mosei_dir):
    return _mosei(str(mosei_dir))


@pytest.fixture
def mosei_segments(mosei_dir):
    return json.loads((mosei_dir / "segments.json").read_text())["segments"]


def test_mosei_table_matches_every_segment(mosei_table, mosei_segments):
    table = mosei_table
    assert len(table) == len(mosei_segments) == 36
    assert table.labels_multi_names == MOSEI_EMOTIONS
    assert (table.columns["label"] == -1).all()
    row_of = {uid: i for i, uid in enumerate(table.ids)}
    for seg in mosei_segments:
        row = row_of[segment_id(seg["video"], seg["start"], seg["end"])]
        assert table.columns["video_id"][row] == seg["video"] == table.columns["dialogue_id"][row]
        assert table.columns["start"][row] == seg["start"] and table.columns["end"][row] == seg["end"]
        assert table.columns["sentiment"][row] == np.float32(seg["labels"][0])
        np.testing.assert_array_equal(table.columns["labels_multi"][row], np.float32(seg["labels"][1:]))
    assert set(table.columns["split"]) <= {"train", "dev", "test"}
    assert table.ids[0].startswith("-")  # video ids may start with '-'


def test_mosei_features_match_every_segment(mosei_dir, mosei_table, mosei_segments):
    table = mosei_table
    row_of = {uid: i for i, uid in enumerate(table.ids)}
    results = {m: mosei_feature_arrays(str(mosei_dir), table, m) for m in ("covarep", "facet", "glove", "words")}
    for seg in mosei_segments:
        row = row_of[segment_id(seg["video"], seg["start"], seg["end"])]
        assert results["covarep"].arrays[row].shape == (seg["n_covarep"], 74)
        assert results["facet"].arrays[row].shape == (seg["n_facet"], 35)
        assert results["glove"].arrays[row].shape == (seg["n_words"], 300)
        words = results["words"].arrays[row]
        assert words.shape == (seg["n_words"],)
        # text = the same words without pause tokens
        assert table.columns["text"][row] == " ".join(w for w in words if w != "sp")
        assert "sp" not in table.columns["text"][row].split()
    for result in results.values():
        assert result.n_missing == 0 and not any(result.notes)
        assert all(np.isfinite(a).all() for a in result.arrays if a.dtype != object)
    assert results["covarep"].modality.rate_hz == 100.0 and results["facet"].modality.rate_hz == 30.0
    assert {m: MOSEI_MODALITIES[m].dim for m in ("covarep", "facet", "glove")} == {"covarep": 74, "facet": 35, "glove": 300}
    assert results["facet"].root_name == "FACET 4.2"


def test_mosei_neg_inf_counted_and_zeroed(mosei_dir, mosei_table):
    result = mosei_feature_arrays(str(mosei_dir), mosei_table, "covarep")
    # count -inf in overlapping frames straight from the file, independently of the loader
    expected_per_row = []
    with h5py.File(mosei_dir / "CMU_MOSEI_COVAREP.csd", "r") as f:
        data = f["COVAREP"]["data"]
        for video, start, end in zip(mosei_table.columns["video_id"], mosei_table.columns["start"], mosei_table.columns["end"]):
            iv = data[video]["intervals"][()]
            feats = data[video]["features"][()][(iv[:, 0] < end) & (iv[:, 1] > start)]
            expected_per_row.append(int(np.isneginf(feats).sum()))
    assert sum(expected_per_row) > 0
    assert result.n_neg_inf == sum(expected_per_row)
    np.testing.assert_array_equal(result.nonfinite_per_row, expected_per_row)
    assert result.provenance()["nonfinite_replaced_by_zero"] == {"neg_inf": sum(expected_per_row), "pos_inf": 0, "nan": 0}
    row = int(np.argmax(expected_per_row))
    assert np.isfinite(result.arrays[row]).all() and (result.arrays[row] == 0).sum() >= expected_per_row[row]


def _copy_without_video(source: Path, target: Path, drop: str) -> None:
    with h5py.File(source, "r") as src, h5py.File(target, "w") as dst:
        (root,) = src.keys()
        for video in src[root]["data"]:
            if video != drop:
                src.copy(src[root]["data"][video], dst.require_group(f"{root}/data"), name=video)


def test_mosei_absent_video_and_empty_segment_are_missing_with_notes(mosei_dir, mosei_table, tmp_path):
    video = str(mosei_table.columns["video_id"][0])
    _copy_without_video(mosei_dir / "CMU_MOSEI_VisualFacet42.csd", tmp_path / "facet.csd", video)
    result = mosei_feature_arrays(str(mosei_dir), mosei_table, "facet", file_name=str(tmp_path / "facet.csd"))
    rows = np.flatnonzero(mosei_table.columns["video_id"] == video)
    assert result.n_missing == len(rows) > 0
    assert all(result.arrays[r] is None for r in rows)
    assert result.notes[rows[0]] == f"video {video!r} not in {tmp_path / 'facet.csd'}"

    far = mosei_table.select(np.arange(2))
    far.columns["start"][:] = [1e6, 1.0]
    far.columns["end"][:] = [1e6 + 1, 1.0]  # empty segment [1, 1) overlaps nothing either
    items = list(iter_mosei_segment_features(str(mosei_dir), far, "covarep"))
    assert [i.array for i in items] == [None, None]
    assert "no covarep frames of video" in items[0].note and "CMU_MOSEI_COVAREP.csd" in items[0].note


def test_mosei_corrupt_files_raise_corpus_error_naming_file(mosei_dir, mosei_table, tmp_path):
    truncated = tmp_path / "CMU_MOSEI_VisualFacet42.csd"
    data = (mosei_dir / "CMU_MOSEI_VisualFacet42.csd").read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorpusError, match=str(truncated)):
        mosei_feature_arrays(str(tmp_path), mosei_table, "facet")
    garbage = tmp_path / "CMU_MOSEI_Labels.csd"
    garbage.write_bytes(b"not hdf5 at all")
    with pytest.raises(CorpusError, match="not a readable HDF5"):
        load_mosei_csd(str(tmp_path), words_file=None)
    two_roots = tmp_path / "two.csd"
    with h5py.File(two_roots, "w") as f:
        f.create_group("a/data")
        f.create_group("b/data")
    with pytest.raises(CorpusError, match=r"exactly one top-level group.*\['a', 'b'\]"):
        load_mosei_csd(str(tmp_path), labels_file="two.csd", words_file=None)
    with pytest.raises(CorpusError, match="does not exist"):
        load_mosei_csd(str(mosei_dir), words_file="nope.csd")
    with pytest.raises(CorpusError, match="expected \\(n, 74\\)"):
        mosei_feature_arrays(str(mosei_dir), mosei_table, "covarep", file_name="CMU_MOSEI_VisualFacet42.csd")


def test_mosei_folds_file_and_hash_split(mosei_dir, mosei_table, tmp_path):
    videos = list(dict.fromkeys(mosei_table.columns["video_id"]))
    folds = {"standard_train_fold": videos[:6], "standard_valid_fold": videos[6:8], "test": videos[8:]}
    (tmp_path / "folds.json").write_text(json.dumps(folds))
    table = load_mosei_csd(str(mosei_dir), folds=str(tmp_path / "folds.json"))
    split_of = dict(zip(table.columns["video_id"], table.columns["split"]))
    assert [split_of[v] for v in videos] == ["train"] * 6 + ["dev"] * 2 + ["test"] * 4

    (tmp_path / "folds.txt").write_text("# video split\n" + "\n".join(f"{v} train" for v in videos[1:]) + "\n")
    with pytest.raises(CorpusError, match=f"video '{videos[0]}': not listed in folds file"):
        load_mosei_csd(str(mosei_dir), folds=str(tmp_path / "folds.txt"))
    report: dict = {}
    dropped = load_mosei_csd(str(mosei_dir), folds=str(tmp_path / "folds.txt"), unassigned_videos="drop", report=report)
    assert report["dropped_videos"] == [videos[0]] and videos[0] not in set(dropped.columns["video_id"])
    (tmp_path / "bad.txt").write_text(f"{videos[0]} train\n{videos[0]} test\n")
    with pytest.raises(CorpusError, match="line 2: video .* is in both 'train' and 'test'"):
        load_mosei_csd(str(mosei_dir), folds=str(tmp_path / "bad.txt"))

    assert list(mosei_table.columns["split"]) == [hash_split(v) for v in mosei_table.columns["video_id"]]
    many = collections.Counter(hash_split(f"video{i}") for i in range(20000))
    assert abs(many["train"] / 20000 - 0.7) < 0.02 and abs(many["dev"] / 20000 - 0.1) < 0.02


# --------------------------------------------------------------------------- manifests


def _write_csv(path: Path, header: list[str], rows: list[list]) -> Path:
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


@pytest.fixture
def media_dir(tmp_path):
    (tmp_path / "clips").mkdir()
    for name in ("a.wav", "b.wav", "a.mp4"):
        (tmp_path / "clips" / name).write_bytes(b"")
    return tmp_path


def test_manifest_csv_relative_paths_labels_and_metadata(media_dir):
    path = _write_csv(
        media_dir / "corpus.csv",
        ["id", "text", "audio", "video", "start", "end", "label", "speaker", "dialogue", "turn", "split", "age", "mic"],
        [
            ["u1", "hello there", "clips/a.wav", "clips/a.mp4", "0.5", "2", "happy", "s1", "d1", "0", "train", "31", "near"],
            ["u2", "", "clips/b.wav", "", "", "", "sad", "s2", "d1", "1", "test", "", "far"],
        ],
    )
    report: dict = {}
    table = load_corpus({"kind": "manifest", "path": str(path), "label_names": ["sad", "happy", "angry"]}, report=report)
    assert list(table.ids) == ["u1", "u2"]
    assert table.label_names == ["sad", "happy", "angry"] and list(table.columns["label"]) == [1, 0]
    assert table.columns["audio_path"][0] == str(media_dir / "clips" / "a.wav")
    assert table.columns["video_path"][0] == str(media_dir / "clips" / "a.mp4") and table.columns["video_path"][1] == ""
    assert table.columns["start"][0] == 0.5 and np.isnan(table.columns["start"][1])
    assert list(table.columns["turn"]) == [0, 1] and list(table.columns["split"]) == ["train", "test"]
    assert list(table.columns["dialogue_id"]) == ["d1", "d1"] and table.columns["dataset"][0] == "corpus"
    assert table.columns["age"].dtype == np.float64 and table.columns["age"][0] == 31 and np.isnan(table.columns["age"][1])
    assert list(table.columns["mic"]) == ["near", "far"]
    assert table.labels_multi_names == [] and report["rows"] == 2


def test_manifest_jsonl_multilabel(media_dir):
    lines = [
        {"id": "x1", "text": "yay", "audio": "clips/a.wav", "labels": ["joy", "surprise"], "extra": {"k": 1}},
        {"id": "x2", "labels": "fear; joy"},
        {"id": 3, "labels": "[]"},
        {"id": "x4", "labels": ""},
    ]
    path = media_dir / "m.jsonl"
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n\n")
    table = load_manifest(str(path))
    assert table.labels_multi_names == ["fear", "joy", "surprise"] == table.label_names
    multi = table.columns["labels_multi"]
    np.testing.assert_array_equal(multi[:3], [[0, 1, 1], [1, 1, 0], [0, 0, 0]])
    assert np.isnan(multi[3]).all()  # empty cell = not annotated
    assert list(table.ids) == ["x1", "x2", "3", "x4"]
    assert list(table.columns["split"]) == ["train"] * 4
    assert table.columns["extra"][0] == '{"k": 1}' and table.columns["extra"][1] == ""


def test_manifest_errors_name_file_row_and_problem(media_dir):
    p = _write_csv(media_dir / "noid.csv", ["name", "text"], [["a", "b"]])
    with pytest.raises(CorpusError, match=r"noid.csv: required column 'id' is missing"):
        load_manifest(str(p))
    p = _write_csv(media_dir / "dup.csv", ["id", "text"], [["a", "1"], ["b", "2"], ["a", "3"]])
    with pytest.raises(CorpusError, match=r"dup.csv: duplicate id\(s\): 'a' \(line 2 and line 4\)"):
        load_manifest(str(p))
    p = _write_csv(media_dir / "lab.csv", ["id", "label"], [["a", "happy"], ["b", "meh"]])
    with pytest.raises(CorpusError, match=r"lab.csv line 3 \(id 'b'\): unknown label\(s\) \['meh'\]"):
        load_manifest(str(p), label_names=["happy"])
    report: dict = {}
    kept = load_manifest(str(p), label_names=["happy"], unknown_labels="drop", report=report)
    assert list(kept.ids) == ["a"] and report["dropped_unknown_label_rows"] == ["b"]
    ignored = load_manifest(str(p), label_names=["happy"], unknown_labels="ignore")
    assert list(ignored.columns["label"]) == [0, -1]
    p = _write_csv(media_dir / "media.csv", ["id", "audio"], [["a", "clips/a.wav"], ["b", "clips/none.wav"]])
    with pytest.raises(CorpusError, match=r"line 3 \(id 'b'\): audio file .*none.wav does not exist"):
        load_manifest(str(p))
    recorded = load_manifest(str(p), missing_media="record")
    assert recorded.columns["audio_path"][1] == "" and "audio not found" in recorded.columns["media_missing_reason"][1]
    p = _write_csv(media_dir / "split.csv", ["id", "split"], [["a", "valid"]])
    with pytest.raises(CorpusError, match="split 'valid' is not one of"):
        load_manifest(str(p))
    p = _write_csv(media_dir / "turn.csv", ["id", "turn"], [["a", "1.5"]])
    with pytest.raises(CorpusError, match="column 'turn' must be an integer"):
        load_manifest(str(p))
    p = _write_csv(media_dir / "clash.csv", ["id", "dialogue_id"], [["a", "d"]])
    with pytest.raises(CorpusError, match=r"\['dialogue_id'\] are written by the adapter"):
        load_manifest(str(p))
    (media_dir / "bad.jsonl").write_text('{"id": "a"}\n[1, 2]\n')
    with pytest.raises(CorpusError, match="bad.jsonl line 2: expected a JSON object"):
        load_manifest(str(media_dir / "bad.jsonl"))
    (media_dir / "m.txt").write_text("id\na\n")
    with pytest.raises(CorpusError, match="unknown manifest format"):
        load_manifest(str(media_dir / "m.txt"))


# Fuzzing the manifest reader: each cell is usually plausible for its column (so loads can
# succeed and the success path gets exercised) and sometimes arbitrary text or JSON.
_GARBAGE_TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=12)
_GARBAGE_JSON = st.one_of(
    _GARBAGE_TEXT,
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True),
    st.lists(st.text(max_size=3), max_size=3),
    st.dictionaries(st.text(max_size=2), st.integers(), max_size=2),
)
_PLAUSIBLE = {
    "id": st.sampled_from([f"u{i}" for i in range(30)] + ["-v[1.000,2.000]", "dia0 utt1", "ß/é"]),
    "text": _GARBAGE_TEXT,
    "audio": st.sampled_from(["", "clips/a.wav", "clips/missing.wav", "/abs/none.wav"]),
    "start": st.sampled_from(["", "0", "1.5", "nan", "1e400", "-3"]),
    "end": st.sampled_from(["", "2", "7.25"]),
    "label": st.sampled_from(["", "a", "b", "c"]),
    "labels": st.sampled_from(["", "a;b", "c", '["b"]', "[]", "a; ;b"]),
    "speaker": _GARBAGE_TEXT,
    "turn": st.sampled_from(["", "0", "7", "2.0", "99999999999"]),
    "split": st.sampled_from(["train", "dev", "test"]),
    "sentiment": st.sampled_from(["", "-1", "0.5", "3"]),
    "note": _GARBAGE_TEXT,
}
_COLUMNS = list(_PLAUSIBLE)


def _cell(column: str, garbage: st.SearchStrategy) -> st.SearchStrategy:
    # hypothesis favours small integers, so the rare branch sits at the top of the range
    return st.integers(0, 9).flatmap(lambda k: garbage if k == 9 else _PLAUSIBLE[column])


def _check_fuzzed_table(table, n_rows: int) -> None:
    assert 0 < len(table) <= n_rows
    assert len(set(table.ids)) == len(table)
    assert set(table.columns["split"]) <= {"train", "dev", "test"}
    assert all(p == "" or Path(p).is_absolute() for p in table.columns["audio_path"])


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_manifest_csv_fuzz_only_corpus_errors_escape(media_dir, data):
    with_id = data.draw(st.integers(0, 9)) < 9
    others = data.draw(st.lists(st.sampled_from(_COLUMNS[1:]), max_size=8, unique=True))
    header = (["id"] if with_id else []) + others or ["note"]
    n_rows = data.draw(st.integers(0, 5)) if data.draw(st.integers(0, 9)) == 9 else data.draw(st.integers(1, 5))
    rows = [[data.draw(_cell(c, _GARBAGE_TEXT)) for c in header] for _ in range(n_rows)]
    if data.draw(st.integers(0, 4)) == 4 and rows:  # ragged rows
        rows[-1] = rows[-1][: data.draw(st.integers(0, len(header) + 1))] + ["extra"] * data.draw(st.integers(0, 1))
    path = _write_csv(media_dir / "fuzz.csv", header, rows)
    try:
        table = load_manifest(str(path), missing_media=data.draw(st.sampled_from(["error", "record"])),
                              unknown_labels=data.draw(st.sampled_from(["error", "drop", "ignore"])),
                              label_names=data.draw(st.sampled_from([None, ["a", "b"]])))
    except CorpusError:
        return
    _check_fuzzed_table(table, n_rows)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_manifest_jsonl_fuzz_only_corpus_errors_escape(media_dir, data):
    rows = []
    for _ in range(data.draw(st.integers(0, 5))):
        columns = data.draw(st.lists(st.sampled_from(_COLUMNS), max_size=8, unique=True))
        if data.draw(st.integers(0, 9)) < 9 and "id" not in columns:
            columns.append("id")
        rows.append({c: data.draw(_cell(c, _GARBAGE_JSON)) for c in columns})
    path = media_dir / "fuzz.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    try:
        table = load_manifest(str(path), missing_media="record", unknown_labels=data.draw(st.sampled_from(["error", "drop"])))
    except CorpusError:
        return
    _check_fuzzed_table(table, len(rows))


# --------------------------------------------------------------------------- audio folder (EmoDB)


def test_emodb_folder(emodb_dir):
    report: dict = {}
    table = load_corpus({"kind": "audio_folder", "root": str(emodb_dir), "preset": "emodb"}, report=report)
    assert len(table) == 408
    assert sorted(set(table.columns["speaker"])) == ["03", "08", "09", "10", "11", "12", "13", "14"]
    assert table.label_names == list(EMODB_PRESET["label_map"].values())
    files = sorted((emodb_dir).glob("**/*.wav"))
    expected = collections.Counter(EMODB_PRESET["label_map"][f.stem[5]] for f in files)
    got = collections.Counter(table.label_names[i] for i in table.columns["label"])
    assert got == expected and report["label_counts"] == dict(expected)
    row = list(table.ids).index("03a01Fa")
    assert table.label_names[table.columns["label"][row]] == "happiness"
    assert table.columns["text_id"][row] == "a01" and table.columns["version"][row] == "a"
    assert table.columns["audio_path"][row] == str(emodb_dir.resolve() / "wav" / "03a01Fa.wav")
    assert (table.columns["split"] == "train").all() and table.columns["dataset"][0] == "emodb"

    held_out = load_audio_folder(str(emodb_dir), preset="emodb", split_by={"speaker": {"03": "test", "08": "dev"}})
    by_speaker = {s: set(held_out.columns["split"][held_out.columns["speaker"] == s]) for s in ("03", "08", "09")}
    assert by_speaker == {"03": {"test"}, "08": {"dev"}, "09": {"train"}}
    with pytest.raises(CorpusError, match=r"split_by 'speaker': value\(s\) \['3'\] match no file"):
        load_audio_folder(str(emodb_dir), preset="emodb", split_by={"speaker": {3: "test"}})  # YAML's 03


def test_audio_folder_unmatched_and_bad_codes(tmp_path):
    for name in ("03a01Fa.wav", "readme.wav"):
        (tmp_path / name).write_bytes(b"")
    with pytest.raises(CorpusError, match=r"readme.wav: file name 'readme' does not match pattern"):
        load_audio_folder(str(tmp_path), **EMODB_PRESET)
    report: dict = {}
    table = load_audio_folder(str(tmp_path), preset="emodb", on_unmatched="skip", report=report)
    assert list(table.ids) == ["03a01Fa"] and report["skipped_unmatched"] == [str(tmp_path / "readme.wav")]
    (tmp_path / "03a01Xa.wav").write_bytes(b"")
    with pytest.raises(CorpusError, match=r"03a01Xa.wav: label code 'X' is not in label_map"):
        load_audio_folder(str(tmp_path), preset="emodb", on_unmatched="skip")
    with pytest.raises(CorpusError, match="split_by group 'room' is not a named group"):
        load_audio_folder(str(tmp_path), preset="emodb", split_by={"room": {"1": "test"}})
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "03a01Fa.wav").write_bytes(b"")
    with pytest.raises(CorpusError, match="utterance id '03a01Fa' is also the stem of"):
        load_audio_folder(str(tmp_path), pattern=None)
