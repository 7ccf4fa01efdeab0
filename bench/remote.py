"""Training from a cache on object storage: epoch time from the local folder vs from a
localhost S3 server, same data, one run.

    python bench/remote.py [--dialogues 30] [--dim 768] [--rounds 5] [--out bench/results/remote.json]

One synthetic cache (fuse.testing.synthetic_cache, the shapes of bench/train.py) is written
locally, pushed with `cache_schema.transfer.push` (what `fuse cache push` runs) to an S3
server started here on a free localhost port (moto's server mode, `python -m moto.server`, in
its own process, as a real object store would be), and opened twice: from the folder and from
the `s3://` URL through s3fs. Both views stream (no in-memory copy).

(a) Epoch time. One model, one optimiser; in round r both views train epoch r, so they see the
    same batches. The views run in lockstep: step k of the local epoch and step k of the S3
    epoch (each including fetching its batch) run back to back, in alternating order, so load
    from other processes on the shared machine lands on both alike. Reported: total wall time
    over all rounds per view and the ratio of the totals (S3 / local).
(b) Data path alone: the same epochs without the model (fetch and pad the batches only), in
    lockstep; ratio of the totals. This isolates what the object store costs.
An untimed warm-up epoch of both views comes first (lazy initialisation of torch and of the
S3 client).
(c) Opening: `open_cache` + `FeatureData.for_training` (reads the train split once to fit the
    normalisation) for each view, and the push itself.

Excluded: network distance (the server is on localhost: no latency beyond the HTTP stack; a
real bucket adds its round-trip time to each request), TLS, and the server's own speed (moto
keeps objects in memory, single-threaded Python). The local folder's page cache is warm.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def feature_sets(dim: int) -> dict:
    # As bench/train.py: BERT-like tokens, 50 Hz audio frames (2-4 s), 8 video frames.
    return {"text.bench": ("text", dim, 10, 30), "audio.bench": ("audio", dim, 100, 200), "video.bench": ("video", dim, 8, 8)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_s3_server(env: dict) -> tuple[subprocess.Popen, str]:
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return server, endpoint
        except OSError:
            time.sleep(0.2)
    server.kill()
    raise SystemExit("the moto S3 server did not start within 60 s")


def git_commit() -> str:
    from bench.provenance import commit_label

    return commit_label()


def lockstep(views: dict, rows, batch_size: int, epochs, step) -> dict[str, list[float]]:
    """Wall seconds per epoch and view; step k of every view runs back to back."""
    order = list(views)
    first = next(iter(views.values()))
    times = {name: [] for name in order}
    for r in epochs:
        iterators = {name: iter(view.batches(rows, batch_size, shuffle=True, seed=0, epoch=r)) for name, view in views.items()}
        spent = dict.fromkeys(order, 0.0)
        for k in range(first.n_batches(rows, batch_size, True, 0, r)):
            for name in order if k % 2 == 0 else order[::-1]:
                wall = time.perf_counter()
                step(next(iterators[name]))
                spent[name] += time.perf_counter() - wall
        for name in order:
            times[name].append(spent[name])
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "remote.json"))
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--dialogues", type=int, default=30, help="dialogues (x10 utterances) of the cache")
    ap.add_argument("--model", default="cmaf")
    ap.add_argument("--rounds", type=int, default=5, help="epochs timed per view")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--block-mb", type=float, default=16.0, help="streaming block size (the library default)")
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()

    import copy

    import torch

    from cache_schema import open_cache
    from cache_schema.transfer import push
    from fuse.data import FeatureData
    from fuse.device import seed_everything
    from fuse.models import MODELS, build_model
    from fuse.testing.synthetic_cache import make_synthetic_cache

    started = time.perf_counter()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so `finally` stops the server
    # Dummy credentials for the local server; never a probe of a cloud metadata service.
    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1", AWS_EC2_METADATA_DISABLED="true")
    server, endpoint = start_s3_server(dict(os.environ))
    work = Path(args.workdir or tempfile.mkdtemp(prefix="emofuse-bench-remote-"))
    try:
        import s3fs

        storage = {"endpoint_url": endpoint}
        s3fs.S3FileSystem(**storage).mkdir("bench")
        local_path = work / "feats.zarr"
        make_synthetic_cache(local_path, n_dialogues=args.dialogues, turns=10, feature_sets=feature_sets(args.dim), missing_every={}, seed=1)
        url = "s3://bench/feats.zarr"
        t0 = time.perf_counter()
        pushed = push(local_path, url, storage_options=storage)
        push_s = time.perf_counter() - t0

        seed_everything(0, deterministic=True)
        views, opening = {}, {}
        for name, where, options in (("local", local_path, None), ("s3", url, storage)):
            t0 = time.perf_counter()
            cache = open_cache(where, options)
            views[name] = FeatureData.for_training(cache, {}, metadata=[], block_mb=args.block_mb)
            opening[name] = round(time.perf_counter() - t0, 3)
        data = views["local"]
        rows = data.indices("train")
        model = build_model(args.model, data.input_dims, data.n_classes, data.spec.task, None)
        defaults = MODELS[args.model][0].default_training
        initial = copy.deepcopy(model.state_dict())
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=defaults.weight_decay)
        model.train()

        def train_step(batch) -> None:
            output = model(batch)
            output.loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), defaults.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        lockstep(views, rows, args.batch_size, [0], train_step)  # warm-up epoch, not timed (lazy initialisation)
        model.load_state_dict(initial)
        timed = range(1, args.rounds + 1)
        epochs = lockstep(views, rows, args.batch_size, timed, train_step)
        reads = lockstep(views, rows, args.batch_size, timed, lambda batch: None)
    finally:
        server.terminate()
        server.wait(timeout=30)
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)

    def totals(times: dict[str, list[float]]) -> dict:
        local, s3 = sum(times["local"]), sum(times["s3"])
        return {
            "local_total_s": round(local, 3),
            "s3_total_s": round(s3, 3),
            "s3_over_local": round(s3 / local, 3),
            "local_per_round_s": [round(t, 3) for t in times["local"]],
            "s3_per_round_s": [round(t, 3) for t in times["s3"]],
        }

    command = "python bench/remote.py " + " ".join(sys.argv[1:])
    result = {
        "command": command.strip(),
        "commit": git_commit(),
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "note": "shared 2-core machine, loaded by other sessions' work during the run; compare the ratios, not absolute times",
            "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        },
        "setup": {
            "model": args.model,
            "batch_size": args.batch_size,
            "block_mb": args.block_mb,
            "rounds": args.rounds,
            "dim": args.dim,
            "dtype": "float16",
            "utterances": pushed.n_utterances,
            "train_utterances": int(len(rows)),
            "batches_per_epoch": data.n_batches(rows, args.batch_size, True, 0, 0),
            "cache_files": pushed.files,
            "cache_mb": round(pushed.bytes / 2**20, 1),
            "prefetch_thread": data.prefetch,
            "server": "moto 'python -m moto.server' on 127.0.0.1 (own process); client s3fs via zarr FsspecStore",
        },
        "push_s": round(push_s, 2),
        "push_mb_per_s": round(pushed.bytes / 2**20 / push_s, 1),
        "open_and_fit_normalisation_s": opening,
        "epoch_with_training": totals(epochs),
        "data_path_only": totals(reads),
        "excludes": "network latency and bandwidth of a real bucket (localhost server), TLS; moto's own speed is included",
        "wall_s": round(time.perf_counter() - started, 1),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
