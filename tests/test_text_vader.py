"""The optional VADER sentiment encoder (kind vader, the sentiment extra)."""
from __future__ import annotations

import pytest

from extract.encoders import EncoderInputError, Utterance, build_encoder


def test_vader_scores_text_sentiment():
    pytest.importorskip("vaderSentiment", reason="the sentiment extra is not installed (pip install -e '.[sentiment]')")
    encoder = build_encoder({"kind": "vader"})
    happy, sad = encoder.encode([Utterance("a", text="I love this, it is wonderful!"),
                                 Utterance("b", text="This is terrible and I hate it.")])
    assert happy.shape == sad.shape == (1, 4)
    assert abs(happy[0, :3].sum() - 1.0) < 2e-3 and happy[0, 3] > 0.5 and sad[0, 3] < -0.5
    with pytest.raises(EncoderInputError, match="empty text"):
        encoder.prepare(Utterance("c", text="  "))
    record = encoder.provenance()
    assert record["frame_rate"] == "utterance" and set(record["weight_files"]) == {"vader_lexicon.txt", "emoji_utf8_lexicon.txt"}
