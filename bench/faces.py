"""Face pipeline speed on CPU, and its share of the video job's time.

    python bench/faces.py [--dialogues 6] [--threads 2] [--repeats 2] [--out bench/results/faces.json]

Builds a small demo corpus (extract.demo, `--dialogues` dialogues, 160 x 160 clips at 12 fps)
in a temporary folder and times, per utterance (8 sampled frames each):

* decode: `load_video_frames` alone (what any video encoder pays);
* face pipeline: `extract.media.faces.find_faces` = decode + Haar detection on every frame +
  face choice + crop boxes, with `speaker: largest` and with `speaker: active` (one face per
  demo clip, so `active` adds the track linking only; audio is read only when faces compete);
* face-expression end to end: `extract.batching.encode_utterances` with the encoder of
  config/config.yaml (prepare in the main process, then the FER2013 CNN), which is what a
  part job runs; the CNN's share is `encode_batch` over the prepared items;
* image-cnn (EfficientNet-Lite0) on the face crops, end to end, on the first `--cnn-n` utterances.

The machine's load average at start and end is recorded too: on a shared machine other
processes slow every stage (the shares are less affected than the rates).
Reported: frames/s of each stage, ms per frame, and the face pipeline's share of the
face-expression job's time (face pipeline minus decode = detection + choice, and including
decode). Timings are the minimum over `--repeats` runs. Writes the machine, sizes, the commit
and this command to bench/results/faces.json.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def commit() -> str:
    from bench.provenance import commit_label

    return commit_label()


def best_of(repeats: int, function) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dialogues", type=int, default=6)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--cnn-n", type=int, default=8)
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "faces.json"))
    args = parser.parse_args()

    import torch

    from benchmarks.common import machine
    from extract.batching import encode_utterances
    from extract.corpora import load_corpus
    from extract.demo import generate_demo
    from extract.encoders import Utterance, build_encoder
    from extract.media import load_video_frames
    from extract.media.faces import FaceDetector, find_faces

    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        generate_demo(Path(tmp) / "demo", n_dialogues=args.dialogues, seed=0)
        table = load_corpus({"kind": "meld", "root": str(Path(tmp) / "demo")})
        paths = [str(p) for p in table.columns["video_path"]]
        utterances = [Utterance(f"u{i}", video_path=p, audio_path=p) for i, p in enumerate(paths)]
        n_frames = 8 * len(paths)
        detector = FaceDetector()

        decode = best_of(args.repeats, lambda: [load_video_frames(p, size=160, normalize="none") for p in paths])
        largest = best_of(args.repeats, lambda: [find_faces(p, detector=detector, speaker="largest") for p in paths])
        active = best_of(args.repeats, lambda: [find_faces(p, detector=detector, speaker="active", audio_path=p) for p in paths])
        found = sum(int(find_faces(p, detector=detector).found.sum()) for p in paths)

        encoder = build_encoder({"kind": "face-expression", "output": "both", "speaker": "largest"}, device="cpu")

        # A faceless clip is a recorded failure; it is timed like the others.
        end_to_end = best_of(args.repeats, lambda: list(encode_utterances(encoder, utterances, num_workers=0, progress=False)))
        prepared = [encoder.prepare(u) for u in utterances if find_faces(u.video_path, detector=detector).found.any()]
        cnn = best_of(args.repeats, lambda: [encoder.encode_batch(prepared[i:i + 32]) for i in range(0, len(prepared), 32)])

        cnn_utterances = utterances[: args.cnn_n]
        image_cnn = build_encoder({"kind": "image-cnn", "region": "face"}, device="cpu")
        image_cnn_seconds = best_of(1, lambda: list(encode_utterances(image_cnn, cnn_utterances, num_workers=0, progress=False)))

    def rate(seconds, frames=n_frames):
        return {"seconds": round(seconds, 3), "frames_per_s": round(frames / seconds, 1), "ms_per_frame": round(1000 * seconds / frames, 3)}

    result = {
        "command": "python bench/faces.py " + " ".join(sys.argv[1:]),
        "commit": commit(),
        "machine": machine(),
        "load_average_1_5_15_min": {"start": [round(v, 2) for v in load_before],
                                    "end": [round(v, 2) for v in os.getloadavg()]},
        "sizes": {"utterances": len(paths), "frames": n_frames, "frame_size": "160x160 (demo clips, 12 fps)",
                  "frames_with_a_face": found, "threads": args.threads, "repeats": args.repeats,
                  "image_cnn_utterances": len(cnn_utterances)},
        "decode_only": rate(decode),
        "face_pipeline_largest": rate(largest),
        "face_pipeline_active": rate(active),
        "detection_and_choice_only": rate(max(largest - decode, 1e-9)),
        "face_expression_end_to_end": rate(end_to_end),
        "fer_cnn_only": rate(cnn, 8 * len(prepared)),
        "image_cnn_face_end_to_end": rate(image_cnn_seconds, 8 * len(cnn_utterances)),
        "share_of_face_expression_job": {
            "face_pipeline_incl_decode": round(largest / end_to_end, 3),
            "detection_and_choice": round((largest - decode) / end_to_end, 3),
            "fer_cnn": round(cnn / end_to_end, 3),
        },
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
