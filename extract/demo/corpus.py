"""Plan the demo corpus (dialogues, labels, per-modality renderings) and write it in MELD's layout."""
from __future__ import annotations

import csv
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import audio, text, video
from .mp4 import write_mp4

EMOTIONS = ("neutral", "joy", "surprise", "anger", "sadness", "disgust", "fear")  # MELD's order
MODALITIES = ("text", "audio", "video")
SPLITS = ("train", "dev", "test")
SPLIT_MEDIA_DIRS = {"train": "train_splits", "dev": "dev_splits_complete", "test": "output_repeated_splits_test"}
MELD_COLUMNS = (
    "Sr No.", "Utterance", "Speaker", "Emotion", "Sentiment", "Dialogue_ID", "Utterance_ID",
    "Season", "Episode", "StartTime", "EndTime",
)
RENDERINGS_FILE = "demo_modality_renderings.csv"
README_MARKER = "emofuse synthetic demo corpus"

# Label prior: MELD's order of frequency, flattened so that even a small demo holds every class.
EMOTION_PRIOR = {"neutral": 0.28, "joy": 0.18, "surprise": 0.13, "anger": 0.12, "sadness": 0.11, "disgust": 0.08, "fear": 0.10}
# Per utterance and modality, independently: P_FLAT renders neutral instead of the true
# emotion, P_CONFUSABLE renders one of the true emotion's CONFUSABLE partners (uniformly).
P_FLAT = 0.22
P_CONFUSABLE = 0.13
CONFUSABLE = {
    "neutral": ("sadness", "joy"),
    "joy": ("surprise",),
    "surprise": ("joy", "fear"),
    "anger": ("disgust",),
    "sadness": ("fear", "disgust"),
    "disgust": ("anger", "sadness"),
    "fear": ("surprise", "sadness"),
}
INTENSITY_RANGE = (0.55, 1.0)  # drawn per utterance for audio and video; 0 would be neutral
GRADED_MODALITIES = ("audio", "video")  # text shows a cue phrase or not; it has no intensity
UTTERANCES_PER_DIALOGUE = (5, 8)


@dataclass(frozen=True)
class Speaker:
    name: str
    voice: audio.Voice
    face: video.FaceGeometry


def _speaker(name, f0_hz, formant_scale, loudness, half_width, half_height, eye_offset, eye_size, skin, hair, background):
    face = video.FaceGeometry(half_width, half_height, eye_offset, eye_size, skin, hair, background)
    return Speaker(name, audio.Voice(f0_hz, formant_scale, loudness), face)


# Two higher and two lower voices, each with its own face shape and colours. Columns: name,
# F0 (Hz), formant scale, loudness; face half-width, half-height, eye offset, eye half-width
# (fractions of the frame); skin, hair and background RGB.
SPEAKERS = (
    _speaker("Mira", 220, 1.17, 1.00, 0.27, 0.34, 0.095, 0.045, (235, 195, 170), (90, 50, 30), (170, 200, 230)),
    _speaker("Theo", 105, 1.00, 1.05, 0.30, 0.33, 0.110, 0.040, (200, 150, 120), (40, 30, 25), (200, 220, 180)),
    _speaker("Jun", 135, 1.05, 1.00, 0.28, 0.36, 0.100, 0.042, (225, 185, 140), (20, 20, 20), (220, 200, 200)),
    _speaker("Ada", 190, 1.12, 0.95, 0.26, 0.32, 0.090, 0.045, (170, 120, 90), (60, 35, 20), (210, 210, 170)),
)


@dataclass(frozen=True)
class UtterancePlan:
    split: str
    dialogue_id: int
    utterance_id: int
    speaker: Speaker
    emotion: str
    rendered: dict[str, str]        # modality -> emotion that modality expresses
    intensity: dict[str, float]     # audio/video -> expression strength in INTENSITY_RANGE
    text: str
    season: int
    episode: int
    start_s: float
    duration_s: float

    @property
    def end_s(self) -> float:
        return self.start_s + self.duration_s

    @property
    def clip_name(self) -> str:
        return f"dia{self.dialogue_id}_utt{self.utterance_id}.mp4"


def sentiment_of(emotion: str) -> str:
    """MELD-style sentiment. Real MELD labels surprise either way; here every non-joy emotion is negative."""
    return {"joy": "positive", "neutral": "neutral"}.get(emotion, "negative")


def split_sizes(n_dialogues: int) -> dict[str, int]:
    """Dialogues per split: 15% dev, 15% test (at least one each), the rest train (34/7/7 for 48)."""
    if n_dialogues < 3:
        raise ValueError(f"n_dialogues={n_dialogues}: need at least 3 (one per train/dev/test split)")
    held_out = max(1, round(0.15 * n_dialogues))
    held_out = min(held_out, (n_dialogues - 1) // 2)
    return {"train": n_dialogues - 2 * held_out, "dev": held_out, "test": held_out}


def rendering_probabilities() -> np.ndarray:
    """P(rendered emotion | true emotion) for one modality, as a (7, 7) matrix in EMOTIONS order."""
    index = {e: i for i, e in enumerate(EMOTIONS)}
    matrix = np.zeros((len(EMOTIONS), len(EMOTIONS)))
    for true in EMOTIONS:
        row = index[true]
        matrix[row, row] += 1.0 - P_FLAT - P_CONFUSABLE
        matrix[row, index["neutral"]] += P_FLAT
        for partner in CONFUSABLE[true]:
            matrix[row, index[partner]] += P_CONFUSABLE / len(CONFUSABLE[true])
    return matrix


def bayes_accuracies() -> dict[str, float]:
    """Best accuracy any classifier can reach from one modality vs from all three (exact, from the design).

    An ideal single-modality model reads the rendered emotion perfectly and answers the most
    probable true label for it; an ideal fusion model does the same from the three renderings.
    These are the ceilings a model trained on the demo can approach; `rendered_is_true` is how
    often one modality shows the true emotion at all.
    """
    prior = np.array([EMOTION_PRIOR[e] for e in EMOTIONS])
    render = rendering_probabilities()
    single = np.sum(np.max(prior[:, None] * render, axis=0))
    joint = prior[:, None, None, None] * render[:, :, None, None] * render[:, None, :, None] * render[:, None, None, :]
    fused = np.sum(np.max(joint, axis=0))
    return {
        "rendered_is_true": float(np.sum(prior * np.diag(render))),
        "single_modality": float(single),
        "all_three": float(fused),
    }


def plan_corpus(n_dialogues: int, seed: int) -> list[UtterancePlan]:
    """Every utterance of the corpus, in split then dialogue then utterance order."""
    sizes = split_sizes(n_dialogues)
    rng = np.random.default_rng(seed)
    emotions = list(EMOTION_PRIOR)
    prior = np.array([EMOTION_PRIOR[e] for e in emotions])
    plans = []
    for split in SPLITS:
        for dialogue_id in range(sizes[split]):
            cast = [SPEAKERS[i] for i in rng.choice(len(SPEAKERS), size=int(rng.integers(2, 4)), replace=False)]
            season, episode = int(rng.integers(1, 11)), int(rng.integers(1, 25))
            clock = rng.uniform(30.0, 1300.0)
            speaker = cast[0]
            for utterance_id in range(int(rng.integers(UTTERANCES_PER_DIALOGUE[0], UTTERANCES_PER_DIALOGUE[1] + 1))):
                if utterance_id > 0:  # the next line goes to someone else in the scene
                    others = [s for s in cast if s is not speaker]
                    speaker = others[int(rng.integers(len(others)))]
                listener = next(s for s in cast if s is not speaker)
                emotion = emotions[int(rng.choice(len(emotions), p=prior))]
                rendered = {m: _render(rng, emotion) for m in MODALITIES}
                intensity = {m: round(float(rng.uniform(*INTENSITY_RANGE)), 3) for m in GRADED_MODALITIES}
                line = text.compose_utterance(rng, rendered["text"], listener.name)
                prosody = audio.prosody_for(rendered["audio"], intensity["audio"])
                duration = round(audio.speech_duration(len(line.split()), prosody), 3)
                start = round(clock, 3)
                plans.append(UtterancePlan(
                    split, dialogue_id, utterance_id, speaker, emotion, rendered, intensity, line,
                    season, episode, start, duration,
                ))
                clock = start + duration + rng.uniform(0.1, 0.8)
    return plans


def _render(rng: np.random.Generator, emotion: str) -> str:
    draw = rng.random()
    if draw < P_FLAT:
        return "neutral"
    if draw < P_FLAT + P_CONFUSABLE:
        partners = CONFUSABLE[emotion]
        return partners[int(rng.integers(len(partners)))]
    return emotion


def render_clip(plan: UtterancePlan, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(RGB frames, waveform) of one utterance; its own RNG stream, so clips do not depend on each other."""
    rng = np.random.default_rng([seed, SPLITS.index(plan.split), plan.dialogue_id, plan.utterance_id])
    duration = plan.duration_s
    prosody = audio.prosody_for(plan.rendered["audio"], plan.intensity["audio"])
    waveform = audio.synthesize_speech(rng, prosody, plan.speaker.voice, duration)
    face_rate = audio.prosody_for(plan.rendered["video"], plan.intensity["video"]).syllable_rate_hz
    expression = video.expression_for(plan.rendered["video"], plan.intensity["video"])
    frames = video.render_face(rng, expression, plan.speaker.face, duration, face_rate)
    return frames, waveform


def _write_clip(job: tuple[UtterancePlan, int, Path]) -> None:
    plan, seed, path = job
    frames, waveform = render_clip(plan, seed)
    write_mp4(path, frames, video.FRAMES_PER_SECOND, waveform, audio.SAMPLE_RATE)


def format_meld_time(seconds: float) -> str:
    """Seconds -> MELD's "HH:MM:SS,mmm"."""
    millis = int(round(seconds * 1000))
    hours, rest = divmod(millis, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    return f"{hours:02d}:{minutes:02d}:{rest // 1000:02d},{rest % 1000:03d}"


def generate_demo(out_dir: str | Path, n_dialogues: int = 48, seed: int = 0, workers: int = 1) -> dict:
    """Write the synthetic MELD-layout corpus to `out_dir`; return a summary dict.

    workers > 1 renders and encodes clips in that many processes; every clip has its own
    RNG stream, so the output is the same for any number of workers.
    Summary keys: out_dir, seed, n_dialogues, dialogues and utterances (per split), emotions
    (true-label counts), bayes_accuracies (design ceilings, see `bayes_accuracies`), seconds.
    """
    started = time.perf_counter()
    if workers < 1:
        raise ValueError(f"workers={workers}: need at least 1")
    out = Path(out_dir)
    plans = plan_corpus(n_dialogues, seed)  # first: bad arguments fail before anything is written
    _prepare_output_dir(out)
    # README first, so a run that dies half-way leaves a folder the next run may replace.
    (out / "README.txt").write_text(_readme(n_dialogues, seed), encoding="utf-8")

    for split in SPLITS:
        (out / SPLIT_MEDIA_DIRS[split]).mkdir(parents=True, exist_ok=True)
    jobs = [(plan, seed, out / SPLIT_MEDIA_DIRS[plan.split] / plan.clip_name) for plan in plans]
    if workers > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            list(pool.map(_write_clip, jobs, chunksize=4))
    else:
        for job in jobs:
            _write_clip(job)

    for split in SPLITS:
        _write_meld_csv(out / f"{split}_sent_emo.csv", [p for p in plans if p.split == split])
    _write_renderings(out / RENDERINGS_FILE, plans)

    return {
        "out_dir": str(out),
        "seed": seed,
        "n_dialogues": n_dialogues,
        "dialogues": split_sizes(n_dialogues),
        "utterances": {s: sum(p.split == s for p in plans) for s in SPLITS},
        "emotions": {e: sum(p.emotion == e for p in plans) for e in EMOTIONS},
        "bayes_accuracies": bayes_accuracies(),
        "seconds": round(time.perf_counter() - started, 2),
    }


def _prepare_output_dir(out: Path) -> None:
    """Create `out`, or clear the files of an earlier demo there; never touch a folder that is not ours."""
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"demo output {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        readme = out / "README.txt"
        if not (readme.is_file() and readme.read_text(encoding="utf-8", errors="replace").startswith(README_MARKER)):
            raise FileExistsError(f"demo output {out} is not empty and holds no earlier demo corpus (README.txt); refusing to write into it")
        for media_dir in SPLIT_MEDIA_DIRS.values():  # stale clips from a run with more dialogues
            for clip in (out / media_dir).glob("dia*_utt*.mp4"):
                clip.unlink()
    out.mkdir(parents=True, exist_ok=True)


def _write_meld_csv(path: Path, plans: list[UtterancePlan]) -> None:
    # csv's default "\r\n" line ends and minimal quoting match MELD's own files ("00:16:16,059" is quoted).
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(MELD_COLUMNS)
        for number, p in enumerate(plans, start=1):
            writer.writerow([
                number, p.text, p.speaker.name, p.emotion, sentiment_of(p.emotion), p.dialogue_id, p.utterance_id,
                p.season, p.episode, format_meld_time(p.start_s), format_meld_time(p.end_s),
            ])


def _write_renderings(path: Path, plans: list[UtterancePlan]) -> None:
    """What each modality actually expressed: lets a benchmark check per-modality ceilings."""
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["split", "Dialogue_ID", "Utterance_ID", "Emotion"]
                        + [f"{m}_rendered" for m in MODALITIES] + [f"{m}_intensity" for m in GRADED_MODALITIES])
        for p in plans:
            writer.writerow([p.split, p.dialogue_id, p.utterance_id, p.emotion]
                            + [p.rendered[m] for m in MODALITIES] + [f"{p.intensity[m]:.3f}" for m in GRADED_MODALITIES])


def _readme(n_dialogues: int, seed: int) -> str:
    ceilings = bayes_accuracies()
    return f"""{README_MARKER}
{'=' * len(README_MARKER)}

Everything here is SYNTHETIC, made by `python -m extract.demo OUT_DIR --dialogues {n_dialogues} --seed {seed}`
(emofuse, extract/demo/). No real people, recordings or transcripts. It exists to run the
emofuse pipeline end to end without the real MELD media; numbers measured on it say nothing
about real emotion recognition.

Layout follows MELD.Raw, so the MELD adapter reads it unchanged:
  train_sent_emo.csv, dev_sent_emo.csv, test_sent_emo.csv   MELD's columns, labels and CRLF line ends
  train_splits/, dev_splits_complete/, output_repeated_splits_test/   dia{{D}}_utt{{U}}.mp4
Each clip: H.264 {video.FRAME_SIZE}x{video.FRAME_SIZE} at {video.FRAMES_PER_SECOND} fps of a cartoon face, plus AAC mono
{audio.SAMPLE_RATE} Hz of synthetic speech-like audio, {audio.MIN_DURATION_S:g}-{audio.MAX_DURATION_S:g} s.

Labels: MELD's seven emotions; Sentiment is derived (joy positive, neutral neutral, others negative).
Each modality expresses the label independently: with probability {P_FLAT} it is rendered
neutral, with probability {P_CONFUSABLE} as a confusable emotion, otherwise as the true one.
Ceilings an ideal model can reach (exact, from the design): one modality
{ceilings['single_modality']:.3f}, all three {ceilings['all_three']:.3f}. {RENDERINGS_FILE} lists what
each modality expressed per utterance.
"""
