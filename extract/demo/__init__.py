"""Bundled synthetic demo corpus: MELD-shaped dialogues with text, speech-like audio and a face.

`python -m extract.demo OUT_DIR [--dialogues 48] [--seed 0] [--workers 1]`, or
`generate_demo(out_dir, n_dialogues=48, seed=0, workers=1) -> summary dict`.

What is written (MELD.Raw's layout, so `extract.corpora.meld` reads it unchanged):
`{train,dev,test}_sent_emo.csv` with MELD's eleven columns, and one MP4 per row (H.264 video
+ AAC 16 kHz mono audio) in `train_splits/`, `dev_splits_complete/` and
`output_repeated_splits_test/`, named `dia{D}_utt{U}.mp4`. Dialogues have 5-8 utterances
between 2-3 of four speakers; 15% of dialogues go to dev, 15% to test (34/7/7 for 48), and
Dialogue_ID restarts at 0 in each split, as in MELD. Also `README.txt` (says it is synthetic)
and `demo_modality_renderings.csv` (what each modality expressed, for checking ceilings).

Design: each modality alone is informative but ambiguous; together they are much better.
For every utterance the true label is drawn from EMOTION_PRIOR (MELD's order, flattened),
then, independently for text, audio and video:
  - with P_FLAT = 0.22 the modality is rendered neutral (a flat voice, a neutral face, a
    neutral line), which for a truly neutral utterance is simply correct;
  - with P_CONFUSABLE = 0.13 it is rendered as a confusable emotion (CONFUSABLE: joy <->
    surprise, anger <-> disgust, sadness <-> fear, ...);
  - otherwise (0.65) it shows the true emotion; audio and video at an intensity drawn
    from [0.55, 1.0] (how far prosody and expression move away from neutral).
A modality therefore shows the true emotion 71% of the time (87% for neutral, 65% for the
others, weighted by the prior). The best possible classifier reaches 0.712 from one
modality and 0.894 from all three (exact values: `bayes_accuracies()`), because a flat
rendering in one modality is outvoted by a non-neutral one elsewhere.
Speakers differ in base pitch (105-220 Hz), vocal-tract length and face geometry/colours,
so a model has to normalise per speaker. Lips move at the face's own rendered speaking rate,
not in sync with the audio, so the face does not leak the audio's rendering. One small leak
is kept on purpose: a clip lasts as long as its line takes to say at the audio's speaking
rate (as in real speech), so clip length says a little about text and audio.

Determinism: the plan (labels, renderings, text, times) comes from one RNG seeded with `seed`;
each clip has its own RNG seeded with (seed, split, dialogue, utterance). Same seed gives
byte-identical CSVs and identical decoded audio and frames, for any number of workers (with
the same FFmpeg/x264 build the MP4 files are byte-identical too).
"""
from .corpus import (
    EMOTIONS,
    MELD_COLUMNS,
    SPLIT_MEDIA_DIRS,
    bayes_accuracies,
    generate_demo,
    plan_corpus,
    render_clip,
)

__all__ = ["EMOTIONS", "MELD_COLUMNS", "SPLIT_MEDIA_DIRS", "bayes_accuracies", "generate_demo", "plan_corpus", "render_clip"]
