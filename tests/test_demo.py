"""The bundled synthetic demo corpus (extract/demo): MELD layout, playable clips, determinism, design."""
from __future__ import annotations

import contextlib
import csv
import io
import re
import time
from pathlib import Path

import av
import numpy as np
import pytest

from extract.demo import EMOTIONS, MELD_COLUMNS, SPLIT_MEDIA_DIRS, bayes_accuracies, generate_demo, plan_corpus
from extract.demo import audio as demo_audio
from extract.demo.__main__ import main as demo_main
from extract.demo.corpus import P_CONFUSABLE, P_FLAT, SPEAKERS, rendering_probabilities, sentiment_of
from extract.demo.mp4 import write_mp4
from extract.demo.video import FRAME_SIZE, FRAMES_PER_SECOND

N_DIALOGUES = 3
MELD_TIME = re.compile(r"^\d{2}:\d{2}:\d{2},\d{3}$")


def _seconds(value: str) -> float:
    hours, minutes, rest = value.split(":")
    secs, millis = rest.split(",")
    return int(hours) * 3600 + int(minutes) * 60 + int(secs) + int(millis) / 1000


def _rows(corpus: Path, split: str) -> list[dict[str, str]]:
    with open(corpus / f"{split}_sent_emo.csv", encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def _decode_audio(path: Path) -> tuple[np.ndarray, int]:
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        samples = np.concatenate([frame.to_ndarray() for frame in container.decode(stream)], axis=1)
        return samples, stream.codec_context.sample_rate


def _decode_frames(path: Path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("demo") / "corpus"
    return out, generate_demo(out, n_dialogues=N_DIALOGUES, seed=0)


@pytest.fixture(scope="module")
def corpus(demo) -> Path:
    return demo[0]


@pytest.fixture(scope="module")
def corpus_again(tmp_path_factory) -> tuple[Path, str]:
    """The same corpus written a second time, through the CLI and with two worker processes."""
    out = tmp_path_factory.mktemp("demo_again") / "corpus"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        demo_main([str(out), "--dialogues", str(N_DIALOGUES), "--seed", "0", "--workers", "2"])
    return out, printed.getvalue()


def test_csvs_have_meld_columns_labels_and_times(corpus):
    for split in ("train", "dev", "test"):
        raw = (corpus / f"{split}_sent_emo.csv").read_bytes()
        assert raw.startswith(",".join(MELD_COLUMNS).encode() + b"\r\n"), "header or line end differs from MELD's"
        rows = _rows(corpus, split)
        assert rows, f"{split} is empty"
        assert [int(r["Sr No."]) for r in rows] == list(range(1, len(rows) + 1))
        assert {r["Emotion"] for r in rows} <= set(EMOTIONS)
        assert all(r["Sentiment"] == sentiment_of(r["Emotion"]) for r in rows)
        assert {r["Speaker"] for r in rows} <= {s.name for s in SPEAKERS}
        dialogue_ids = sorted({int(r["Dialogue_ID"]) for r in rows})
        assert dialogue_ids == list(range(len(dialogue_ids))), "Dialogue_ID restarts at 0 in each split, as in MELD"
        for dialogue in dialogue_ids:
            utterances = [int(r["Utterance_ID"]) for r in rows if int(r["Dialogue_ID"]) == dialogue]
            assert utterances == list(range(len(utterances))) and 5 <= len(utterances) <= 8
        for r in rows:
            assert MELD_TIME.match(r["StartTime"]) and MELD_TIME.match(r["EndTime"]), r
            assert 1.0 <= _seconds(r["EndTime"]) - _seconds(r["StartTime"]) <= 4.0 + 1e-3, r
            assert r["Utterance"].strip()


def test_every_row_has_its_clip_in_the_split_folder(corpus):
    for split, folder in SPLIT_MEDIA_DIRS.items():
        expected = {f"dia{r['Dialogue_ID']}_utt{r['Utterance_ID']}.mp4" for r in _rows(corpus, split)}
        assert {p.name for p in (corpus / folder).glob("*.mp4")} == expected


def test_clips_decode_with_audio_and_video_matching_the_csv(corpus):
    for split, folder in SPLIT_MEDIA_DIRS.items():
        for r in _rows(corpus, split):
            path = corpus / folder / f"dia{r['Dialogue_ID']}_utt{r['Utterance_ID']}.mp4"
            duration = _seconds(r["EndTime"]) - _seconds(r["StartTime"])
            with av.open(str(path)) as container:
                assert len(container.streams.audio) == 1 and len(container.streams.video) == 1, path
                assert container.streams.video[0].codec_context.name == "h264"
                assert container.streams.audio[0].codec_context.name == "aac"
            samples, rate = _decode_audio(path)
            assert rate == demo_audio.SAMPLE_RATE and samples.shape[0] == 1
            # AAC pads the last 1024-sample frame, so decoded audio can run up to 64 ms long.
            assert duration - 0.01 <= samples.shape[1] / rate <= duration + 0.07, (path, samples.shape, duration)
            assert 0.005 < np.sqrt(np.mean(samples**2)) < 0.5, f"{path}: audio is silent or clipped"
            frames = _decode_frames(path)
            assert frames.shape[1:] == (FRAME_SIZE, FRAME_SIZE, 3)
            assert abs(len(frames) - duration * FRAMES_PER_SECOND) <= 1
            assert frames.std() > 10, f"{path}: frames are blank"


def test_decord_opens_the_clips(corpus):
    decord = pytest.importorskip("decord")
    path = next((corpus / SPLIT_MEDIA_DIRS["train"]).glob("*.mp4"))
    reader = decord.VideoReader(str(path))
    assert len(reader) == len(_decode_frames(path))
    assert reader[0].asnumpy().shape == (FRAME_SIZE, FRAME_SIZE, 3)
    assert reader.get_avg_fps() == pytest.approx(FRAMES_PER_SECOND)


def test_same_seed_gives_identical_corpus(corpus, corpus_again):
    again, printed = corpus_again
    assert re.search(r"\d+ train / \d+ dev / \d+ test utterances .* in [\d.]+ s", printed), printed
    for split, folder in SPLIT_MEDIA_DIRS.items():
        name = f"{split}_sent_emo.csv"
        assert (corpus / name).read_bytes() == (again / name).read_bytes()
        for clip in sorted((corpus / folder).glob("*.mp4")):
            first, _ = _decode_audio(clip)
            second, _ = _decode_audio(again / folder / clip.name)
            np.testing.assert_array_equal(first, second)
        clip = next((corpus / folder).glob("*.mp4"))
        np.testing.assert_array_equal(_decode_frames(clip), _decode_frames(again / folder / clip.name))


def test_other_seed_gives_other_plan():
    first = [(p.text, p.emotion) for p in plan_corpus(N_DIALOGUES, seed=0)]
    second = [(p.text, p.emotion) for p in plan_corpus(N_DIALOGUES, seed=1)]
    assert first != second


def test_meld_adapter_reads_the_demo_unchanged(corpus):
    meld = pytest.importorskip("extract.corpora.meld")
    report: dict = {}
    table = meld.load_meld(str(corpus), report=report)
    total = sum(len(_rows(corpus, s)) for s in SPLIT_MEDIA_DIRS)
    assert report["rows"] == total and len(table.ids) == total
    assert report["media_missing"] == 0


def test_readme_and_summary(demo):
    corpus, summary = demo
    readme = (corpus / "README.txt").read_text(encoding="utf-8")
    assert "SYNTHETIC" in readme
    assert summary["out_dir"] == str(corpus)
    assert summary["dialogues"] == {"train": 1, "dev": 1, "test": 1}
    assert sum(summary["utterances"].values()) == sum(summary["emotions"].values())
    assert sum(summary["utterances"].values()) == sum(len(_rows(corpus, s)) for s in SPLIT_MEDIA_DIRS)


def _voiced_audio(emotion: str, speaker_index: int, seed: int, tmp_path: Path) -> np.ndarray:
    """Synthesise `emotion` at the weakest intensity used, round-trip it through AAC, decode."""
    prosody = demo_audio.prosody_for(emotion, 0.55)
    waveform = demo_audio.synthesize_speech(np.random.default_rng(seed), prosody, SPEAKERS[speaker_index].voice, 2.0)
    path = tmp_path / f"{emotion}_{speaker_index}_{seed}.mp4"
    write_mp4(path, np.full((24, 32, 32, 3), 128, np.uint8), FRAMES_PER_SECOND, waveform, demo_audio.SAMPLE_RATE)
    return _decode_audio(path)[0][0]


def test_emotions_differ_measurably_in_energy_and_pitch(tmp_path):
    opensmile = pytest.importorskip("opensmile")
    smile = opensmile.Smile(feature_set=opensmile.FeatureSet.eGeMAPSv02, feature_level=opensmile.FeatureLevel.Functionals)

    def measure(emotion: str, speaker_index: int, seed: int) -> tuple[float, float]:
        samples = _voiced_audio(emotion, speaker_index, seed, tmp_path)
        features = smile.process_signal(samples, demo_audio.SAMPLE_RATE)
        return float(np.sqrt(np.mean(samples**2))), float(features["F0semitoneFrom27.5Hz_sma3nz_amean"].iloc[0])

    for speaker_index, speaker in enumerate(SPEAKERS):
        anger_energy, _ = measure("anger", speaker_index, seed=speaker_index)
        sadness_energy, sadness_pitch = measure("sadness", speaker_index, seed=speaker_index + 10)
        _, joy_pitch = measure("joy", speaker_index, seed=speaker_index + 20)
        # Energy: even weak anger is far louder than sadness.
        assert anger_energy > 1.8 * sadness_energy, (speaker.name, anger_energy, sadness_energy)
        # Pitch (openSMILE's F0 in semitones): joy sits well above sadness (>= 1.5 semitones).
        assert joy_pitch > sadness_pitch + 1.5, (speaker.name, joy_pitch, sadness_pitch)


def test_design_makes_fusion_beat_any_single_modality():
    render = rendering_probabilities()
    np.testing.assert_allclose(render.sum(axis=1), 1.0)
    ceilings = bayes_accuracies()
    assert 0.6 <= ceilings["single_modality"] <= 0.75
    assert ceilings["all_three"] >= ceilings["single_modality"] + 0.15


def test_planned_renderings_follow_the_stated_probabilities():
    plans = plan_corpus(300, seed=7)  # planning only, no media: milliseconds
    non_neutral = [p for p in plans if p.emotion != "neutral"]
    for modality in ("text", "audio", "video"):
        shown = np.mean([p.rendered[modality] == p.emotion for p in non_neutral])
        flat = np.mean([p.rendered[modality] == "neutral" for p in non_neutral])
        assert shown == pytest.approx(1 - P_FLAT - P_CONFUSABLE, abs=0.04), modality
        assert flat == pytest.approx(P_FLAT, abs=0.04), modality
    # Independence across modalities: all three off happens about as often as the product says.
    all_off = np.mean([all(p.rendered[m] != p.emotion for m in ("text", "audio", "video")) for p in non_neutral])
    assert all_off == pytest.approx((P_FLAT + P_CONFUSABLE) ** 3, abs=0.03)
    # The label a majority of modalities shows is right far more often than any one modality.
    majority = np.mean([_majority(p) == p.emotion for p in plans])
    single = np.mean([p.rendered["audio"] == p.emotion for p in plans])
    assert majority > single + 0.05


def _majority(plan) -> str:
    votes = [plan.rendered[m] for m in ("text", "audio", "video")]
    non_neutral = [v for v in votes if v != "neutral"]
    pool = non_neutral or votes  # a flat rendering abstains when another modality shows something
    return max(set(pool), key=pool.count)


def test_bad_arguments_and_foreign_folders_are_refused(tmp_path):
    with pytest.raises(ValueError, match="at least 3"):
        generate_demo(tmp_path / "too_small", n_dialogues=2)
    assert not (tmp_path / "too_small").exists()
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("keep me")
    with pytest.raises(FileExistsError, match="refusing"):
        generate_demo(foreign, n_dialogues=3)
    assert (foreign / "thesis.tex").read_text() == "keep me"


def test_rerun_replaces_an_earlier_demo_without_stale_clips(tmp_path):
    out = tmp_path / "demo"
    generate_demo(out, n_dialogues=3, seed=3)
    stale = out / SPLIT_MEDIA_DIRS["train"] / "dia99_utt0.mp4"
    stale.write_bytes(b"left over from a bigger corpus")
    generate_demo(out, n_dialogues=3, seed=4)
    assert not stale.exists()
    for split, folder in SPLIT_MEDIA_DIRS.items():
        expected = {f"dia{r['Dialogue_ID']}_utt{r['Utterance_ID']}.mp4" for r in _rows(out, split)}
        assert {p.name for p in (out / folder).glob("*.mp4")} == expected


@pytest.mark.slow
def test_full_size_demo_generates(tmp_path):
    # Its speed is bench/demo.py's business (a timed assertion fails on a loaded CI machine).
    started = time.perf_counter()
    summary = generate_demo(tmp_path / "demo48", seed=0)
    elapsed = time.perf_counter() - started
    print(f"\ndemo corpus, 48 dialogues: {sum(summary['utterances'].values())} clips in {elapsed:.1f} s")
    assert summary["dialogues"] == {"train": 34, "dev": 7, "test": 7}
    assert sum(summary["utterances"].values()) == 295
