"""Cartoon talking-face frames for the demo corpus, drawn with OpenCV.

The face shows its emotion through the cues facial-expression models and FACS describe
(Ekman & Friesen's action units, simplified): eye openness (wide in surprise/fear, narrowed
in anger/disgust, heavy-lidded in sadness), eyebrow height and slant (inner ends down in
anger, up in sadness/fear), mouth corners (up for joy, down for sadness), jaw drop, and head
motion (nodding in joy, shaking in anger, trembling in fear, a lowered head in sadness).
Lips move at the speaking rate of the face's own rendered emotion, not in sync with the
audio track, so the video never leaks what the audio rendered (see the package docstring).
As for audio, `Expression` values are full-intensity targets interpolated from neutral.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

import cv2
import numpy as np

FRAME_SIZE = 160
FRAMES_PER_SECOND = 12
_SHIFT = 4                    # OpenCV fixed-point bits: sub-pixel drawing for smooth motion
_SCALE = 1 << _SHIFT


@dataclass(frozen=True)
class FaceGeometry:
    """A speaker's face, in fractions of the frame size, and colours as RGB."""

    half_width: float
    half_height: float
    eye_offset: float        # horizontal distance of each eye from the face centre
    eye_half_width: float
    skin_rgb: tuple[int, int, int]
    hair_rgb: tuple[int, int, int]
    background_rgb: tuple[int, int, int]


@dataclass(frozen=True)
class Expression:
    eye_openness: float      # 1 = relaxed
    brow_raise: float        # + raised, - lowered (in eye widths)
    brow_slant: float        # + inner ends up (sad, fearful), - inner ends down (angry)
    mouth_curve: float       # + corners up (smile), - corners down (frown)
    mouth_asymmetry: float   # one corner raised (the disgust sneer)
    mouth_open: float        # resting jaw drop, 0..1
    mouth_width: float       # 1 = relaxed
    nod_px: float            # vertical head oscillation amplitude (at 160 px)
    shake_px: float          # horizontal head oscillation amplitude
    motion_hz: float
    head_drop_px: float      # + head lowered, - head raised
    head_turn_px: float      # sideways turn away


EXPRESSIONS: dict[str, Expression] = {
    "neutral": Expression(1.00, 0.0, 0.0, 0.0, 0.0, 0.10, 1.00, 0.5, 0.5, 1.0, 0.0, 0.0),
    "joy": Expression(0.70, 0.2, 0.0, 1.0, 0.0, 0.35, 1.25, 3.0, 0.5, 2.0, -2.0, 0.0),
    "surprise": Expression(1.60, 1.0, 0.1, 0.0, 0.0, 0.95, 0.70, 2.0, 0.0, 1.5, -4.0, 0.0),
    "anger": Expression(0.70, -0.5, -1.0, -0.5, 0.0, 0.30, 1.05, 1.0, 4.0, 3.0, 2.0, 0.0),
    "sadness": Expression(0.55, 0.1, 0.9, -0.8, 0.0, 0.05, 0.90, 1.0, 0.3, 0.6, 7.0, 0.0),
    "disgust": Expression(0.60, -0.4, -0.4, -0.5, 0.7, 0.15, 0.90, 0.5, 2.0, 1.0, 1.0, 6.0),
    "fear": Expression(1.45, 0.8, 0.7, -0.3, 0.0, 0.60, 1.15, 1.5, 1.5, 6.0, -1.0, 0.0),
}


def expression_for(emotion: str, intensity: float) -> Expression:
    """Expression of `emotion` at `intensity` (0 = neutral, 1 = the full EXPRESSIONS target)."""
    if emotion not in EXPRESSIONS:
        raise ValueError(f"unknown emotion {emotion!r}; expected one of {sorted(EXPRESSIONS)}")
    if not 0.0 <= intensity <= 1.0:
        raise ValueError(f"intensity {intensity} is outside [0, 1]")
    neutral, target = EXPRESSIONS["neutral"], EXPRESSIONS[emotion]
    return Expression(**{
        f.name: getattr(neutral, f.name) + intensity * (getattr(target, f.name) - getattr(neutral, f.name))
        for f in fields(Expression)
    })


def render_face(
    rng: np.random.Generator,
    expression: Expression,
    face: FaceGeometry,
    duration_s: float,
    speaking_rate_hz: float,
    fps: int = FRAMES_PER_SECOND,
    size: int = FRAME_SIZE,
) -> np.ndarray:
    """RGB frames, uint8 array (n_frames, size, size, 3), of the face talking for `duration_s`."""
    n_frames = max(1, int(round(duration_s * fps)))
    times = np.arange(n_frames) / fps
    motion_phase = rng.uniform(0, 2 * np.pi)
    talk_phase = rng.uniform(0, 2 * np.pi)
    blink_frames = set(rng.choice(n_frames, size=min(n_frames, int(rng.integers(0, 3))), replace=False).tolist())
    background = _background(face.background_rgb, size)
    px = size / FRAME_SIZE  # motion amplitudes are given for 160 px frames

    frames = np.empty((n_frames, size, size, 3), dtype=np.uint8)
    for i, t in enumerate(times):
        wave = 2 * np.pi * expression.motion_hz * t + motion_phase
        centre_x = size / 2 + px * (expression.shake_px * np.sin(wave) + expression.head_turn_px)
        centre_y = size * 0.55 + px * (expression.head_drop_px + expression.nod_px * np.sin(wave + np.pi / 2))
        talking = 0.5 * (1 - np.cos(2 * np.pi * speaking_rate_hz * t + talk_phase))
        frame = background.copy()
        _draw_face(frame, face, expression, centre_x, centre_y, talking, blink=i in blink_frames)
        frames[i] = frame
    return frames


def _background(rgb: tuple[int, int, int], size: int) -> np.ndarray:
    """Background colour with a gentle vertical gradient (so it is not one flat block)."""
    shade = np.linspace(1.05, 0.85, size)[:, None, None]
    return np.clip(np.array(rgb, dtype=float)[None, None, :] * shade, 0, 255).astype(np.uint8).repeat(size, axis=1)


def _pt(x: float, y: float) -> tuple[int, int]:
    return int(round(x * _SCALE)), int(round(y * _SCALE))


def _ellipse(img, centre, axes, colour, thickness=-1) -> None:
    cv2.ellipse(img, _pt(*centre), _pt(max(axes[0], 0.5), max(axes[1], 0.5)), 0, 0, 360, colour, thickness, cv2.LINE_AA, _SHIFT)


def _draw_face(img, face: FaceGeometry, ex: Expression, cx: float, cy: float, talking: float, blink: bool) -> None:
    size = img.shape[0]
    half_w, half_h = face.half_width * size, face.half_height * size
    dark = (40, 30, 30)

    _ellipse(img, (cx, cy - 0.12 * half_h), (1.08 * half_w, 1.02 * half_h), face.hair_rgb)  # hair behind the face
    _ellipse(img, (cx, cy), (half_w, half_h), face.skin_rgb)

    # Eyes: white, iris squeezed by the lids, outline.
    eye_y = cy - 0.22 * half_h
    eye_w = face.eye_half_width * size
    eye_h = 0.08 if blink else eye_w * 0.6 * ex.eye_openness
    for side in (-1, 1):
        eye_x = cx + side * face.eye_offset * size
        _ellipse(img, (eye_x, eye_y), (eye_w, eye_h), (250, 250, 250))
        if not blink:
            _ellipse(img, (eye_x, eye_y), (0.6 * eye_w, min(0.6 * eye_w, eye_h)), (60, 45, 35))
        _ellipse(img, (eye_x, eye_y), (eye_w, eye_h), dark, max(1, size // 120))

        # Brows: raised by brow_raise, inner end lifted (+) or pulled down (-) by brow_slant.
        brow_base = eye_y - eye_w * 0.6 - 0.45 * eye_w - ex.brow_raise * 0.6 * eye_w
        inner = (eye_x - side * 1.0 * eye_w, brow_base - ex.brow_slant * 0.5 * eye_w)
        outer = (eye_x + side * 1.1 * eye_w, brow_base + ex.brow_slant * 0.3 * eye_w)
        cv2.line(img, _pt(*inner), _pt(*outer), face.hair_rgb, max(2, size // 45), cv2.LINE_AA, _SHIFT)

    nose = np.array([_pt(cx, eye_y + 0.1 * half_h), _pt(cx - 0.08 * half_w, cy + 0.22 * half_h), _pt(cx + 0.02 * half_w, cy + 0.24 * half_h)])
    cv2.polylines(img, [nose], False, (150, 100, 80), max(1, size // 120), cv2.LINE_AA, _SHIFT)

    # Mouth: parabola whose corners rise with mouth_curve; lips part with jaw drop + talking.
    mouth_y = cy + 0.52 * half_h
    mouth_w = 0.3 * half_w * ex.mouth_width
    x = np.linspace(-1.0, 1.0, 21)
    centre_line = mouth_y - ex.mouth_curve * 0.35 * mouth_w * x**2 - ex.mouth_asymmetry * 0.25 * mouth_w * np.maximum(x, 0)
    opening = (min(ex.mouth_open, 1.0) * 0.8 + 0.35 * talking) * 0.22 * half_w * (1 - x**2)
    upper = np.stack([cx + x * mouth_w, centre_line - 0.3 * opening], axis=1)
    lower = np.stack([cx + x * mouth_w, centre_line + 0.7 * opening], axis=1)
    to_fixed = lambda points: np.round(points * _SCALE).astype(np.int32)  # noqa: E731
    if opening.max() > 1.0:
        cv2.fillPoly(img, [to_fixed(np.concatenate([upper, lower[::-1]]))], (110, 30, 40), cv2.LINE_AA, _SHIFT)
    cv2.polylines(img, [to_fixed(upper), to_fixed(lower)], False, (150, 60, 60), max(1, size // 80), cv2.LINE_AA, _SHIFT)
