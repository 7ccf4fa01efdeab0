"""Small synthetic caches for tests and benchmarks, written through `cache_schema`.

Features are Gaussian noise plus a class-dependent shift (so a model can learn something)
and a speaker-dependent shift (so speaker normalisation has something to remove). Nothing
here is used by training itself.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from cache_schema import UtteranceTable, create_cache, write_feature_set

DEFAULT_MODALITIES = {
    # name: (modality, dim, min_len, max_len)
    "text.synthetic": ("text", 8, 3, 12),
    "audio.synthetic": ("audio", 6, 10, 60),
    "video.synthetic": ("video", 5, 4, 16),
}


def make_synthetic_cache(
    path: str | Path,
    *,
    n_dialogues: int = 12,
    turns: int = 6,
    classes: tuple[str, ...] = ("neutral", "joy", "anger"),
    multi_label: bool = False,
    with_dev: bool = True,
    feature_sets: dict[str, tuple[str, int, int, int]] | None = None,
    missing_every: dict[str, int] | None = None,
    shift: float = 1.5,
    speaker_shift: float = 3.0,
    dtype: str = "float16",
    seed: int = 0,
    extra_columns: bool = True,
    test_speaker: str | None = None,
    split_names: tuple[str, str, str] = ("train", "dev", "test"),
) -> Path:
    """Write a cache of n_dialogues x turns utterances and return its path.

    Dialogues are split 60/20/20 into train/dev/test (or 80/0/20 without dev). `missing_every`
    maps a feature-set name to k: every k-th utterance lacks that set (missing modality).
    `test_speaker` gives every test utterance that (otherwise unseen) speaker; `split_names`
    renames the splits (e.g. "valid" for dev).
    `multi_label` writes labels_multi intensities (CMU-MOSEI style) instead of single labels.
    """
    path = Path(path)
    rng = np.random.default_rng(seed)
    feature_sets = feature_sets or DEFAULT_MODALITIES
    missing_every = {"video.synthetic": 7} if missing_every is None else missing_every
    speakers = ["Ross", "Rachel", "Monica", "Joey"] + ([test_speaker] if test_speaker else [])
    n_classes = len(classes)
    records, label_of, speaker_of = [], [], []
    for d in range(n_dialogues):
        fraction = d / n_dialogues
        if with_dev:
            split = "train" if fraction < 0.6 else ("dev" if fraction < 0.8 else "test")
        else:
            split = "train" if fraction < 0.8 else "test"
        # Turns are written out of order so readers must sort by `turn`, not by row.
        for t in rng.permutation(turns):
            label = int(rng.integers(n_classes))
            speaker = speakers[int(rng.integers(4))]
            if test_speaker and split == "test":
                speaker = test_speaker
            record = {
                "id": f"dia{d}_utt{t}",
                "split": split_names[("train", "dev", "test").index(split)],
                "dataset": "synthetic",
                "dialogue_id": f"dia{d}",
                "turn": int(t),
                "speaker": speaker,
                "text": f"utterance {t} of dialogue {d}",
                "start": float(t),
                "end": float(t) + 0.9,
            }
            if multi_label:
                intensities = np.zeros(n_classes, dtype=np.float32)
                intensities[label] = float(rng.uniform(0.5, 3.0))
                if rng.random() < 0.3:
                    intensities[int(rng.integers(n_classes))] = float(rng.uniform(0.3, 3.0))
                record["labels_multi"] = intensities.tolist()
                record["sentiment"] = float(rng.uniform(-3, 3))
            else:
                record["label"] = label
            if extra_columns:
                record["season"] = float(1 + d % 3)
            records.append(record)
            label_of.append(label)
            speaker_of.append(speakers.index(speaker))
    if multi_label:
        table = UtteranceTable.from_records(records, labels_multi_names=classes)
    else:
        table = UtteranceTable.from_records(records, label_names=classes)
    create_cache(path, table)
    for name, (modality, dim, lo, hi) in feature_sets.items():
        class_offsets = rng.normal(size=(n_classes, dim)) * shift
        speaker_offsets = rng.normal(size=(len(speakers), dim)) * speaker_shift
        every = missing_every.get(name)
        arrays = []
        for i, (label, speaker) in enumerate(zip(label_of, speaker_of)):
            if every and i % every == every - 1:
                arrays.append(None)
                continue
            length = int(rng.integers(lo, hi + 1))
            values = rng.normal(size=(length, dim)) + class_offsets[label] + speaker_offsets[speaker]
            arrays.append(values.astype(np.float32))
        attrs = {
            "modality": modality,
            "encoder_kind": "synthetic",
            "checkpoint": f"synthetic/{name}",
            "revision": None,
            "weights_sha256": None,
            "layers": None,
            "frame_rate": "token" if modality == "text" else 50.0,
            "pooling": "none",
            "extraction_config": {"seed": seed},
        }
        write_feature_set(path, name, arrays, attrs, dim=dim, dtype=dtype)
    return path
