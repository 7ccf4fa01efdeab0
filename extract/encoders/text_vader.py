"""``vader``: VADER sentiment scores of the utterance text (an optional, lexicon-based extra).

``vaderSentiment`` 3.3.2 (MIT; Hutto & Gilbert, ICWSM 2014) scores English text with a
human-rated lexicon and rules (negation, intensifiers, "but", punctuation, capitals, emoji).
One row per utterance (``frame_rate = "utterance"``), 4 columns: ``neg``, ``neu``, ``pos``
(proportions, summing to 1) and ``compound`` (normalised sum in [-1, 1]). No model weights;
provenance records the sha256 of the package's two lexicon files. Install: the ``sentiment``
extra (``pip install -e '.[sentiment]'``; make test/demo install it).
"""
from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

from .base import Encoder, EncoderInputError, PreparedItem, library_versions, utterance_field
from .packaged import packaged_file

DISTRIBUTION = "vaderSentiment"
INSTALL = "pip install 'vaderSentiment>=3.3.2' (the sentiment extra)"
COLUMNS = ("neg", "neu", "pos", "compound")
LEXICONS = ("vader_lexicon.txt", "emoji_utf8_lexicon.txt")


class VaderEncoder(Encoder):
    """VADER (neg, neu, pos, compound) per utterance.

    Args:
        name: feature-set name (default ``text.vader``).
    """

    encoder_kind = "vader"
    modality = "text"
    default_max_cost = 256.0
    default_max_batch = 256

    def __init__(self, name: str | None = None):
        super().__init__()
        self.lexicons = [packaged_file(DISTRIBUTION, "vaderSentiment", f, INSTALL) for f in LEXICONS]
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

        self.model = SentimentIntensityAnalyzer()  # "model": not sent to DataLoader workers
        self.dim = len(COLUMNS)
        self.frame_rate = "utterance"
        self.name = name or "text.vader"
        self.config = {"kind": self.encoder_kind, "name": self.name}

    def prepare(self, utterance: Any) -> PreparedItem:
        utterance_id = utterance_field(utterance, "utterance_id")
        text = utterance_field(utterance, "text")
        if not isinstance(text, str) or not text.strip():
            raise EncoderInputError(utterance_id, "empty text")
        return PreparedItem(utterance_id, text, {})

    def encode_batch(self, items: list[PreparedItem]) -> list[np.ndarray]:
        out = []
        for item in items:
            scores = self.model.polarity_scores(item.payload)
            out.append(np.array([[scores[c] for c in COLUMNS]], dtype=np.float32))
        self.run_stats["utterances"] += len(items)
        return out

    def _provenance(self) -> dict:
        listing = "".join(f"{f.path.name} {f.sha256}\n" for f in self.lexicons)
        return {
            "checkpoint": f"package:{DISTRIBUTION}",
            "revision": None,
            "weights_sha256": hashlib.sha256(listing.encode()).hexdigest(),
            "weight_files": {f.path.name: f.sha256 for f in self.lexicons},
            "package": DISTRIBUTION,
            "package_version": self.lexicons[0].version,
            "pretrained": True,
            "weights": "VADER lexicon and rules (no learned weights)",
            "licence": "MIT",
            "layers": None,
            "pooling": "utterance",
            "columns": list(COLUMNS),
            "libraries": library_versions(DISTRIBUTION),
        }
