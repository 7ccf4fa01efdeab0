"""Reliability of stage-1 inputs: bad text, bad tables and bad CMU-MOSEI feature files.

The text encoder is a tiny random BERT built from a config plus a WordPiece vocabulary saved to
tmp_path, loaded through the real `from_pretrained` path. Tables and .csd (HDF5) files are
written into tmp_path, following the layout in ../shared/data/README.md.

Already proven elsewhere (referenced, not repeated):
* empty/whitespace/None text is a per-utterance EncoderInputError, also through
  encode_utterances: test_encoders.py::test_empty_text_is_a_per_utterance_error,
  ::test_encode_utterances_isolates_failures_and_matches_direct_encoding
* truncation recorded (max_length=8): test_encoders.py::test_text_truncation_is_recorded
* mojibake repair ("â€™", "Â’") and its count: test_corpora.py::test_repair_mojibake_synthetic,
  ::test_meld_repairs_and_counts_mojibake_keeps_empty_text
* manifest duplicate ids, missing 'id' column, unknown labels, bad split/turn, clashing columns:
  test_corpora.py::test_manifest_errors_name_file_row_and_problem; MELD bad emotion/time/ids:
  ::test_meld_bad_values_name_file_and_row; audio folders: ::test_audio_folder_unmatched_and_bad_codes
* real COVAREP -inf counted and zeroed: test_corpora.py::test_mosei_neg_inf_counted_and_zeroed;
  a video absent from a modality file and a segment without frames are None with a note:
  ::test_mosei_absent_video_and_empty_segment_are_missing_with_notes; a truncated (50%) file,
  non-HDF5 bytes and two root groups: ::test_mosei_corrupt_files_raise_corpus_error_naming_file
"""
from __future__ import annotations

import csv
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from extract.batching import encode_utterances
from extract.corpora import CorpusError, load_manifest, load_meld, load_mosei_csd, mosei_feature_arrays
from extract.encoders import EncoderInputError, Utterance, build_encoder

HIDDEN = 32
WORDS = ("[PAD] [UNK] [CLS] [SEP] [MASK] the a cat dog sat on mat is was happy sad angry i you am not "
         "very , . ! ? ' s ##s ##ed ##ing he").split()
MELD_HEADER = ["Sr No.", "Utterance", "Speaker", "Emotion", "Sentiment", "Dialogue_ID", "Utterance_ID",
               "Season", "Episode", "StartTime", "EndTime"]


@pytest.fixture(scope="module")
def text_encoder(tmp_path_factory):
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder = tmp_path_factory.mktemp("tiny_bert")
    (folder / "vocab.txt").write_text("\n".join(WORDS) + "\n")
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(WORDS), hidden_size=HIDDEN, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=512)).save_pretrained(folder)
    BertTokenizerFast(vocab_file=str(folder / "vocab.txt")).save_pretrained(folder)
    return build_encoder({"kind": "hf-text", "checkpoint": str(folder)}, device="cpu")


# --------------------------------------------------------------------------- bad text


def test_blank_text_in_any_unicode_whitespace_fails_alone(text_encoder):
    texts = ["the cat sat", "", "   ", "\t\r\n", "\u3000\u00a0\u2003", None, "i am happy"]
    utterances = [Utterance(f"dia1_utt{i}", text) for i, text in enumerate(texts)]
    results = {r.index: r for r in encode_utterances(text_encoder, utterances, max_cost=64, max_batch=3,
                                                     progress=False)}
    for i, text in enumerate(texts):
        if text is None or not text.strip():
            assert not results[i].ok and isinstance(results[i].error, EncoderInputError)
            assert f"'dia1_utt{i}'" in results[i].reason and "empty text" in results[i].reason
        else:
            assert results[i].ok
            np.testing.assert_allclose(results[i].features, text_encoder.encode([utterances[i]])[0], atol=1e-5)


@pytest.mark.parametrize("text", ["\u200b\u200b", "\ufeff", "\x00\x01\x7f"])
def test_text_without_any_token_is_an_error(text_encoder, text):
    with pytest.raises(EncoderInputError, match="'u7': no tokens after tokenisation"):
        text_encoder.prepare(Utterance("u7", text))


def test_ten_thousand_token_utterance_is_truncated_and_recorded(text_encoder):
    long_text = " ".join(["the cat sat on the mat"] * 1700)  # 10,200 word-pieces
    utterances = [Utterance("short", "dog"), Utterance("long", long_text), Utterance("other", "you are sad")]
    before = text_encoder.run_stats["truncated_utterances"]
    results = {r.index: r for r in encode_utterances(text_encoder, utterances, progress=False)}
    long = results[1]
    assert long.ok and long.features.shape == (512, HIDDEN)  # max_length, [CLS] and [SEP] included
    assert long.info["truncated"] and long.info["n_tokens"] == 512 and long.info["n_tokens_untruncated"] == 10202
    assert not results[0].info["truncated"] and results[0].features.shape == (3, HIDDEN)
    assert text_encoder.run_stats["truncated_utterances"] - before == 1
    assert text_encoder.provenance()["run_stats"]["truncated_utterances"] >= 1
    assert text_encoder.length_hint(utterances[1]) == 512  # the bucket budget sees the truncated cost


def test_mojibake_text_never_crashes_the_encoder(text_encoder):
    features = text_encoder.encode([Utterance("m", "heÂ’s happy â€œyesâ€\x9d"), Utterance("e", "😀 日本語")])
    assert all(np.isfinite(f).all() and f.shape[0] >= 3 for f in features)


# --------------------------------------------------------------------------- bad tables


def _meld_csv(path: Path, rows: list[list[str]], header=MELD_HEADER, encoding="utf-8") -> Path:
    with open(path, "w", encoding=encoding, newline="") as handle:
        writer = csv.writer(handle, lineterminator="\r\n")
        writer.writerow(header)
        writer.writerows(rows)
    return path


def _meld_row(sr: int, text: str, dialogue: int = 0, utterance: int = 0, emotion="joy", sentiment="positive"):
    return [str(sr), text, "Joey", emotion, sentiment, str(dialogue), str(utterance), "1", "2", "0:00:01,000", "0:00:02,000"]


@pytest.mark.parametrize(
    "name, content",
    [
        ("latin1.csv", "id,text\nu1,café\n".encode("latin-1")),
        ("utf16.csv", "id,text\nu1,hello\n".encode("utf-16")),
        ("cp1252.tsv", "id\ttext\nu1,\u2019quoted\u2019\n".encode("cp1252")),
        ("latin1.jsonl", '{"id": "u1", "text": "caf\u00e9"}\n'.encode("latin-1")),
    ],
)
def test_non_utf8_manifest_is_an_error_naming_the_file(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(CorpusError, match=rf"{path.name}: not valid UTF-8"):
        load_manifest(str(path))


def test_non_utf8_meld_csv_is_an_error_naming_the_file(tmp_path):
    _meld_csv(tmp_path / "dev_sent_emo.csv", [_meld_row(1, "caf\u00e9 au lait")], encoding="latin-1")
    with pytest.raises(CorpusError, match=r"dev_sent_emo.csv: not valid UTF-8"):
        load_meld(str(tmp_path))


def test_mojibake_is_repaired_in_meld_and_kept_verbatim_in_manifests(tmp_path):
    _meld_csv(tmp_path / "dev_sent_emo.csv", [_meld_row(1, "heÂ’s here"), _meld_row(2, "plain", utterance=1)])
    report: dict = {}
    table = load_meld(str(tmp_path), report=report)
    assert list(table.columns["text"]) == ["he’s here", "plain"] and report["mojibake_repaired_ids"] == ["dev/dia0_utt0"]
    manifest = tmp_path / "m.csv"
    manifest.write_text("id,text\nu1,heÂ’s here\n", encoding="utf-8")
    assert load_manifest(str(manifest)).columns["text"][0] == "heÂ’s here"  # documented: read as given


def test_meld_duplicate_ids_missing_columns_and_bad_labels_name_file_and_row(tmp_path):
    csv_file = tmp_path / "dev_sent_emo.csv"
    _meld_csv(csv_file, [_meld_row(1, "hi"), _meld_row(2, "again")])  # both dia0_utt0
    with pytest.raises(CorpusError, match=r"dev_sent_emo.csv row 3 \(dev/dia0_utt0\): duplicate utterance id, first seen on row 2"):
        load_meld(str(tmp_path))
    _meld_csv(csv_file, [[c for j, c in enumerate(_meld_row(1, "hi")) if j != 3]], header=[h for h in MELD_HEADER if h != "Emotion"])
    with pytest.raises(CorpusError, match=r"dev_sent_emo.csv: missing column\(s\) \['Emotion'\]"):
        load_meld(str(tmp_path))
    _meld_csv(csv_file, [_meld_row(1, "hi", sentiment="mixed")])
    with pytest.raises(CorpusError, match=r"row 2 \(dev/dia0_utt0\): sentiment 'mixed' is not one of"):
        load_meld(str(tmp_path))


def test_jsonl_manifest_duplicate_ids_and_missing_id_column(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text('{"id": "a", "text": "x"}\n{"id": "b"}\n{"id": "a"}\n')
    with pytest.raises(CorpusError, match=r"m.jsonl: duplicate id\(s\): 'a' \(line 1 and line 3\)"):
        load_manifest(str(path))
    path.write_text('{"text": "no id"}\n')
    with pytest.raises(CorpusError, match=r"m.jsonl: required column 'id' is missing"):
        load_manifest(str(path))


def test_stray_quote_in_a_meld_csv_is_an_error(tmp_path):
    csv_file = tmp_path / "dev_sent_emo.csv"
    lines = [",".join(MELD_HEADER), ",".join(_meld_row(1, '"he said', utterance=0)),
             ",".join(_meld_row(2, "next", utterance=1)), ",".join(_meld_row(3, "last", utterance=2))]
    csv_file.write_text("\r\n".join(lines) + "\r\n")
    with pytest.raises(CorpusError, match="dev_sent_emo.csv line 2: a quoted field opened in this record is never closed"):
        load_meld(str(tmp_path))


def test_stray_quote_in_a_manifest_is_an_error_not_lost_rows(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text('id,text\nu1,"he said\nu2,next row\nu3,last row\n')
    with pytest.raises(CorpusError, match="m.csv line 2: a quoted field opened in this record is never closed"):
        table = load_manifest(str(path))
        assert len(table) == 3, f"{len(table)} row(s): {list(table.ids)}, text {table.columns['text'][0]!r}"


@pytest.mark.parametrize("adapter", ["meld", "mosei_csd"])
def test_an_empty_corpus_is_an_error(tmp_path, adapter):
    if adapter == "meld":
        _meld_csv(tmp_path / "dev_sent_emo.csv", [])
        load = lambda: load_meld(str(tmp_path))  # noqa: E731
        message = r"dev_sent_emo.csv: no utterances"
    else:
        with h5py.File(tmp_path / "CMU_MOSEI_Labels.csd", "w") as f:
            f.create_group("All Labels/data")
        load = lambda: load_mosei_csd(str(tmp_path), words_file=None)  # noqa: E731
        message = r"CMU_MOSEI_Labels.csd: no labelled segments"
    with pytest.raises(CorpusError, match=message):
        load()


# --------------------------------------------------------------------------- bad .csd feature files


def write_csd(path: Path, root: str, videos: dict[str, tuple[np.ndarray, np.ndarray]], gzip: bool = True) -> Path:
    """A computational sequence: /<root>/data/<video>/{intervals, features} and /<root>/metadata."""
    options = {"compression": "gzip"} if gzip else {}
    with h5py.File(path, "w") as f:
        data = f.create_group(f"{root}/data")
        f[root].create_group("metadata").create_dataset("root name", data=root)
        for video, (intervals, features) in videos.items():
            group = data.create_group(video)
            group.create_dataset("intervals", data=intervals, **options)
            group.create_dataset("features", data=features, **options)
    return path


def frames(n: int, rate: float) -> np.ndarray:
    starts = np.arange(n) / rate
    return np.stack([starts, starts + 1 / rate], axis=1)


@pytest.fixture
def mosei_root(tmp_path) -> Path:
    """Two videos, two labelled segments each; COVAREP at 10 Hz over [0, 4) s."""
    labels = {
        video: (np.array([[0.0, 1.0], [2.0, 3.5]]), np.tile(np.linspace(-1, 1, 7), (2, 1)))
        for video in ("-vidA", "vidB")
    }
    write_csd(tmp_path / "CMU_MOSEI_Labels.csd", "All Labels", labels)
    return tmp_path


def test_nonfinite_feature_values_are_counted_per_kind_and_zeroed(mosei_root):
    table = load_mosei_csd(str(mosei_root), words_file=None)
    rng = np.random.default_rng(0)
    covarep = {video: (frames(40, 10.0), rng.normal(size=(40, 74)).astype(np.float32)) for video in ("-vidA", "vidB")}
    features = covarep["-vidA"][1]
    features[3, 0] = -np.inf  # segment 0 ([0, 1) s = frames 0..9)
    features[5, 1:4] = np.nan  # segment 0
    features[25, 70] = np.inf  # segment 1 ([2, 3.5) s = frames 20..34)
    features[38, 0] = np.nan  # frame 38 (3.8 s) lies in no segment: never read, never counted
    write_csd(mosei_root / "CMU_MOSEI_COVAREP.csd", "COVAREP", covarep)
    result = mosei_feature_arrays(str(mosei_root), table, "covarep")
    assert (result.n_neg_inf, result.n_pos_inf, result.n_nan) == (1, 1, 3)
    assert result.nonfinite_per_row.tolist() == [4, 1, 0, 0]
    assert result.provenance()["nonfinite_replaced_by_zero"] == {"neg_inf": 1, "pos_inf": 1, "nan": 3}
    assert [a.shape for a in result.arrays] == [(10, 74), (15, 74), (10, 74), (15, 74)]
    assert all(np.isfinite(a).all() for a in result.arrays)
    assert result.arrays[0][3, 0] == 0 and (result.arrays[0][5, 1:4] == 0).all() and result.arrays[1][5, 70] == 0
    np.testing.assert_array_equal(result.arrays[0][0], features[0])  # finite values untouched


def test_labels_segment_with_no_frames_and_reversed_interval_are_kept_as_missing(mosei_root):
    """Documented handling: the row stays (labels are real), every modality cut is None with a note."""
    labels = {"vidC": (np.array([[10.0, 11.0], [3.0, 2.0]]), np.zeros((2, 7)))}
    write_csd(mosei_root / "labels_odd.csd", "All Labels", labels)
    table = load_mosei_csd(str(mosei_root), labels_file="labels_odd.csd", words_file=None)
    write_csd(mosei_root / "CMU_MOSEI_COVAREP.csd", "COVAREP", {"vidC": (frames(40, 10.0), np.ones((40, 74), np.float32))})
    result = mosei_feature_arrays(str(mosei_root), table, "covarep")
    assert result.arrays == [None, None]
    assert "no covarep frames of video 'vidC' overlap [10.000, 11.000)" in result.notes[0]
    assert "overlap [3.000, 2.000)" in result.notes[1]


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda f: f.create_group("COVAREP/metadata"), "root group 'COVAREP' has no 'data' group"),
        (lambda f: f.create_dataset("COVAREP", data=np.ones(3)), "has no 'data' group"),
        (lambda f: f.create_dataset("COVAREP/data", data=np.ones(3)), "has no 'data' group"),
        (lambda f: None, r"exactly one top-level group \(the root name\), found \[\]"),
        (lambda f: (f.create_group("COVAREP/data"), f.create_group("FACET 4.2/data")), "found \\['COVAREP', 'FACET 4.2'\\]"),
        (lambda f: f.create_dataset("COVAREP/data/-vidA", data=np.ones(3)), "video '-vidA': unreadable data"),
        (lambda f: (f.create_group("COVAREP/data"), f["COVAREP/data"].__setitem__("-vidA", np.dtype("f8"))), "video '-vidA': unreadable data"),
        (lambda f: (f.create_dataset("COVAREP/data/-vidA/features", data=np.ones((4, 74)))),
         r"video '-vidA': missing 'features' or 'intervals'"),
        (lambda f: (f.create_group("COVAREP/data/-vidA"), f["COVAREP/data/-vidA"].__setitem__("intervals", np.dtype("f8")),
                    f.create_dataset("COVAREP/data/-vidA/features", data=np.ones((4, 74)))),
         r"video '-vidA': 'intervals' is a Datatype, not a dataset"),
        (lambda f: (f.create_dataset("COVAREP/data/-vidA/intervals", data=np.ones((4, 3))),
                    f.create_dataset("COVAREP/data/-vidA/features", data=np.ones((4, 74)))), r"intervals have shape \(4, 3\)"),
        (lambda f: (f.create_dataset("COVAREP/data/-vidA/intervals", data=frames(4, 10)),
                    f.create_dataset("COVAREP/data/-vidA/features", data=np.ones((5, 74)))), "5 feature rows but 4 intervals"),
        (lambda f: (f.create_dataset("COVAREP/data/-vidA/intervals", data=frames(4, 10)),
                    f.create_dataset("COVAREP/data/-vidA/features", data=np.ones((4, 35)))), r"expected \(n, 74\)"),
        (lambda f: (f.create_dataset("COVAREP/data/-vidA/intervals", data=frames(4, 10)),
                    f.create_dataset("COVAREP/data/-vidA/features", data=np.array([[b"x"] * 74] * 4))), "expected numbers"),
    ],
    ids=["no data group", "root is a dataset", "data is a dataset", "no root group", "two root groups",
         "video is a dataset", "video is a named datatype", "no intervals", "intervals is a named datatype", "intervals (n, 3)", "rows != intervals", "wrong dim", "strings"],
)
def test_malformed_feature_file_is_a_corpus_error_naming_file(mosei_root, build, message):
    table = load_mosei_csd(str(mosei_root), words_file=None)
    path = mosei_root / "CMU_MOSEI_COVAREP.csd"
    with h5py.File(path, "w") as f:
        build(f)
    with pytest.raises(CorpusError, match=message) as caught:
        mosei_feature_arrays(str(mosei_root), table, "covarep")
    assert str(path) in str(caught.value)


@pytest.mark.parametrize("fraction", [0.0, 0.01, 0.25, 0.75, 0.99])
def test_truncated_feature_file_is_a_corpus_error_naming_file(mosei_root, fraction):
    table = load_mosei_csd(str(mosei_root), words_file=None)
    rng = np.random.default_rng(1)
    path = write_csd(mosei_root / "CMU_MOSEI_COVAREP.csd", "COVAREP",
                     {v: (frames(400, 100.0), rng.normal(size=(400, 74)).astype(np.float32)) for v in ("-vidA", "vidB")})
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])
    with pytest.raises(CorpusError) as caught:
        mosei_feature_arrays(str(mosei_root), table, "covarep")
    assert str(path) in str(caught.value)


def test_non_numeric_labels_are_a_corpus_error(tmp_path):
    write_csd(tmp_path / "CMU_MOSEI_Labels.csd", "All Labels",
              {"vidA": (np.array([[0.0, 1.0]]), np.array([[b"positive"] * 7]))})
    with pytest.raises(CorpusError, match="CMU_MOSEI_Labels.csd video 'vidA'"):
        load_mosei_csd(str(tmp_path), words_file=None)


def test_words_that_are_not_utf8_are_a_corpus_error(tmp_path):
    write_csd(tmp_path / "CMU_MOSEI_Labels.csd", "All Labels", {"vidA": (np.array([[0.0, 1.0]]), np.zeros((1, 7)))})
    write_csd(tmp_path / "CMU_MOSEI_TimestampedWords.csd", "words",
              {"vidA": (frames(2, 4.0), np.array([[b"caf\xe9"], [b"ok"]], dtype="S4"))})
    with pytest.raises(CorpusError, match=r"CMU_MOSEI_TimestampedWords.csd video 'vidA' word 0: not UTF-8"):
        load_mosei_csd(str(tmp_path))
