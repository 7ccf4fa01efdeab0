"""Write tests/data/faces_golden.json: the face pipeline and FER2013 CNN on a real photograph.

    python tests/make_faces_golden.py

Run once (and again only when the pipeline changes on purpose); tests/test_faces.py compares
against it. The photograph is matplotlib's sample image grace_hopper.jpg (a portrait of Rear
Admiral Grace Hopper, US Navy, public domain), installed with matplotlib.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))


def grace_hopper_rgb():
    import cv2
    import matplotlib.cbook

    path = matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


def measure() -> dict:
    import numpy as np

    from extract.encoders.face_expression import FaceExpressionEncoder
    from extract.media.faces import FaceDetector

    image = grace_hopper_rgb()
    detector = FaceDetector()
    import cv2

    boxes = detector.detect(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY))
    encoder = FaceExpressionEncoder(device="cpu")
    features = encoder.encode_images(image[None])[0]
    return {
        "image": "matplotlib sample_data grace_hopper.jpg",
        "image_shape": list(image.shape),
        "boxes": boxes.tolist(),
        "probabilities": [round(float(v), 6) for v in features[:7]],
        "embedding_first8": [round(float(v), 6) for v in features[7:15]],
        "embedding_norm": round(float(np.linalg.norm(features[7:])), 6),
        "command": "python tests/make_faces_golden.py",
    }


if __name__ == "__main__":
    result = measure()
    (HERE / "data" / "faces_golden.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))
