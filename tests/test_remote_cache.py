"""Caches on object storage: read-only access through fsspec URLs, `fuse cache push/pull`.

The S3 tests talk to a real S3-compatible server (moto's server mode, started here on a free
localhost port) through s3fs, the client users run; nothing of the client is mocked. The
`memory://` test needs no server.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from cache_schema import CacheError, open_cache, validate
from cache_schema.store import cache_path, identity, is_url, require_local
from fuse.cli import main
from fuse.testing.synthetic_cache import make_synthetic_cache

REPO_ROOT = Path(__file__).resolve().parent.parent
TRAIN = ["--model", "late", "--epochs", "2", "--batch-size", "8", "--no-progress"]


def _run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module", autouse=True)
def _restore_fsspec_config():
    """--storage-option sets process-wide fsspec defaults; leave none to other test modules."""
    import copy

    import fsspec.config

    saved = copy.deepcopy(fsspec.config.conf)
    yield
    fsspec.config.conf.clear()
    fsspec.config.conf.update(saved)


@pytest.fixture(scope="module")
def local_cache(tmp_path_factory):
    return make_synthetic_cache(tmp_path_factory.mktemp("remote") / "feats.zarr")


def _same_values(a, b) -> None:
    assert a.feature_names() == b.feature_names() and a.n_utterances == b.n_utterances
    rows = np.arange(a.n_utterances)
    for name in a.feature_names():
        np.testing.assert_array_equal(a[name].batch(rows)[0], b[name].batch(rows)[0])
        np.testing.assert_array_equal(a[name].present, b[name].present)
    np.testing.assert_array_equal(a.column("id").astype(str), b.column("id").astype(str))


def test_locations_are_told_apart():
    assert is_url("s3://bucket/feats.zarr") and is_url("memory://x/y") and is_url("https://host/c.zarr")
    assert not is_url("data/feats.zarr") and not is_url(Path("s3:/odd")) and not is_url("file:///tmp/c.zarr")
    assert cache_path("file:///tmp/c.zarr") == Path("/tmp/c.zarr")
    assert identity("s3://bucket/feats.zarr/") == "s3://bucket/feats.zarr"
    with pytest.raises(CacheError, match=r"s3://b/c\.zarr: merging needs a local folder.*fuse cache push"):
        require_local("s3://b/c.zarr", "merging")


def test_memory_url_push_read_validate_pull(local_cache, tmp_path):
    url = "memory://test-remote-cache/feats.zarr"
    pushed = _run("cache", "push", local_cache, url)
    assert pushed.exit_code == 0, pushed.output
    assert "verified: valid, 72 utterances" in pushed.output
    remote = open_cache(url)
    assert str(remote.path) == url and remote.feature_names() == ["audio.synthetic", "text.synthetic", "video.synthetic"]
    _same_values(open_cache(local_cache), remote)
    checked = _run("cache", "validate", "--deep", url)
    assert checked.exit_code == 0 and f"{url}: valid" in checked.output, checked.output
    again = _run("cache", "push", local_cache, url)
    assert again.exit_code == 2 and "already exists; refusing to overwrite" in again.output

    dest = tmp_path / "pulled.zarr"
    pulled = _run("cache", "pull", url, dest)
    assert pulled.exit_code == 0, pulled.output
    _same_values(open_cache(local_cache), open_cache(dest))
    assert [p.name for p in tmp_path.iterdir()] == ["pulled.zarr"], "the staging folder is gone"


# --- a real S3 server on localhost ------------------------------------------------------


@pytest.fixture(scope="module")
def s3_endpoint():
    pytest.importorskip("s3fs", reason="s3fs not installed (pip install -e '.[test]')")
    server_module = pytest.importorskip("moto.server", reason="moto[server] not installed (pip install -e '.[test]')")
    import s3fs

    with pytest.MonkeyPatch.context() as env:
        # Dummy credentials for the local server, and never a probe of a cloud metadata service.
        for key, value in {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",
        }.items():
            env.setenv(key, value)
        server = server_module.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        s3fs.S3FileSystem(endpoint_url=endpoint).mkdir("emofuse-test")
        try:
            yield endpoint
        finally:
            server.stop()


@pytest.fixture(scope="module")
def s3_cache(s3_endpoint, local_cache):
    url = "s3://emofuse-test/feats.zarr"
    pushed = _run("cache", "push", local_cache, url, "--storage-option", f"endpoint_url={s3_endpoint}")
    assert pushed.exit_code == 0, pushed.output
    return url


def _s3(endpoint: str) -> list[str]:
    return ["--storage-option", f"endpoint_url={endpoint}"]


@pytest.mark.slow
def test_s3_info_validate_and_reads_match_the_local_cache(s3_endpoint, s3_cache, local_cache):
    info = _run("cache", "info", s3_cache, *_s3(s3_endpoint))
    assert info.exit_code == 0, info.output
    assert f"cache: {s3_cache}" in info.output and "utterances: 72 (dev: 12, test: 12, train: 48)" in info.output
    assert "text.synthetic" in info.output and "video.synthetic" in info.output
    checked = _run("cache", "validate", "--deep", s3_cache, *_s3(s3_endpoint))
    assert checked.exit_code == 0 and "valid (schema v1, 72 utterances, 3 feature sets)" in checked.output, checked.output
    _same_values(open_cache(local_cache), open_cache(s3_cache, {"endpoint_url": s3_endpoint}))
    missing = _run("cache", "info", "s3://emofuse-test/nothing.zarr", *_s3(s3_endpoint))
    assert missing.exit_code == 2 and "s3://emofuse-test/nothing.zarr: no such cache" in missing.output
    assert len(missing.output.strip().splitlines()) == 1


@pytest.mark.slow
def test_s3_train_gives_the_local_metrics_and_evaluate_reads_the_url(s3_endpoint, s3_cache, local_cache, tmp_path):
    local_run, remote_run = tmp_path / "local", tmp_path / "remote"
    trained = _run("train", "--cache", local_cache, "--out", local_run, *TRAIN)
    assert trained.exit_code == 0, trained.output
    trained = _run("train", "--cache", s3_cache, "--out", remote_run, *TRAIN, *_s3(s3_endpoint))
    assert trained.exit_code == 0, trained.output
    local_metrics = json.loads((local_run / "metrics.json").read_text())
    remote_metrics = json.loads((remote_run / "metrics.json").read_text())
    assert remote_metrics["splits"] == local_metrics["splits"]
    config = (remote_run / "config.yaml").read_text()
    assert f"cache: {s3_cache}\n" in config and "endpoint_url" not in config, "the URL is saved, connection settings are not"

    # A fresh process configured the documented way (environment only) evaluates on the run's URL.
    env = {**os.environ, "FSSPEC_S3_ENDPOINT_URL": s3_endpoint, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    evaluated = subprocess.run(
        [sys.executable, "-c", "from fuse.cli import main; main()", "evaluate", "--run", str(remote_run), "--split", "test"],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert evaluated.returncode == 0, evaluated.stderr
    assert f"on {s3_cache}, split test" in evaluated.stdout
    rescored = json.loads((remote_run / "metrics.json").read_text())["splits"]["test"]
    assert rescored["weighted_f1"] == pytest.approx(local_metrics["splits"]["test"]["weighted_f1"])


@pytest.mark.slow
def test_s3_writes_are_refused_and_push_never_overwrites_silently(s3_endpoint, s3_cache, local_cache, tmp_path):
    with pytest.raises(CacheError, match="pushing from it needs a local folder"):
        from cache_schema.transfer import push

        push(s3_cache, "s3://emofuse-test/other.zarr")
    refused = _run("cache", "pull", s3_cache, "s3://emofuse-test/copy.zarr", *_s3(s3_endpoint))
    assert refused.exit_code == 2 and "pulling into it needs a local folder" in refused.output
    again = _run("cache", "push", local_cache, s3_cache, *_s3(s3_endpoint))
    assert again.exit_code == 2 and "already exists; refusing to overwrite it" in again.output

    import s3fs

    fs = s3fs.S3FileSystem(endpoint_url=s3_endpoint)
    fs.pipe("emofuse-test/notes/readme.txt", b"not a cache")
    foreign = _run("cache", "push", local_cache, "s3://emofuse-test/notes", "--force", *_s3(s3_endpoint))
    assert foreign.exit_code == 2 and "is not an emofuse cache; refusing to replace it" in foreign.output
    assert fs.cat("emofuse-test/notes/readme.txt") == b"not a cache"

    # A damaged remote copy is reported by validate (a shard object deleted behind its back).
    url = "s3://emofuse-test/damaged.zarr"
    assert _run("cache", "push", local_cache, url, *_s3(s3_endpoint)).exit_code == 0
    fs.rm("emofuse-test/damaged.zarr/features/text.synthetic/values/c/0/0")
    damaged = _run("cache", "validate", url, *_s3(s3_endpoint))
    assert damaged.exit_code == 1 and url in damaged.output, damaged.output
    assert "values shard file" in damaged.output and "missing or empty" in damaged.output


@pytest.mark.slow
def test_s3_pull_round_trips_and_replaces_only_with_force(s3_endpoint, s3_cache, local_cache, tmp_path):
    dest = tmp_path / "pulled.zarr"
    pulled = _run("cache", "pull", s3_cache, dest, *_s3(s3_endpoint))
    assert pulled.exit_code == 0, pulled.output
    assert "verified: valid, 72 utterances, same files and fingerprints" in pulled.output
    _same_values(open_cache(local_cache), validate(dest, deep=True))
    marker = dest / "features" / "text.synthetic" / "zarr.json"
    before = marker.stat().st_ino
    again = _run("cache", "pull", s3_cache, dest, *_s3(s3_endpoint))
    assert again.exit_code == 2 and "already exists; refusing to overwrite it" in again.output
    assert marker.stat().st_ino == before, "the local cache was left alone"
    forced = _run("cache", "pull", s3_cache, dest, "--force", *_s3(s3_endpoint))
    assert forced.exit_code == 0, forced.output
    assert marker.stat().st_ino != before, "--force swapped in a fresh copy"
    _same_values(open_cache(local_cache), open_cache(dest))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pulled.zarr"], "no staging or replaced folder left behind"
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    foreign = _run("cache", "pull", s3_cache, tmp_path / "mine", "--force", *_s3(s3_endpoint))
    assert foreign.exit_code == 2 and "is not an emofuse cache; refusing to replace it" in foreign.output
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


@pytest.mark.parametrize("url", ["s3://bucket/feats.zarr", "memory://feats.zarr"])
def test_every_cache_writer_refuses_a_url(url, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a URL taken for a relative path would create s3:/... here
    from cache_schema import CacheError, UtteranceTable, create_cache, delete_feature_set, merge_parts, write_utterances
    from cache_schema.upgrade import upgrade_cache

    table = UtteranceTable.from_records([{"id": "u1", "split": "train", "text": "hi"}])
    for write in (
        lambda: create_cache(url, table),
        lambda: write_utterances(url, table),
        lambda: merge_parts(url, "text.x", [tmp_path / "part"], {}),
        lambda: delete_feature_set(url, "text.x"),
        lambda: upgrade_cache(url),
    ):
        with pytest.raises(CacheError, match="read-only"):
            write()
    assert not any(p.name.startswith(("s3:", "memory:")) for p in tmp_path.iterdir())


def test_a_sweep_reads_a_url_cache_and_records_the_url(local_cache, tmp_path):
    from fuse.sweep import expand, run_sweep

    url = "memory://test-remote-sweep/feats.zarr"
    assert _run("cache", "push", local_cache, url).exit_code == 0
    plan = expand({"base": {"epochs": 1, "batch_size": 8, "model_config": {"hidden_size": 8}}, "grid": {"model": ["late"], "lr": [3e-3, 1e-2]}})
    result = run_sweep(plan, url, tmp_path / "sweep", echo=lambda *_: None)
    assert result.failed == [], result.outcomes
    for run in plan.runs:
        config = (tmp_path / "sweep" / run.name / "config.yaml").read_text()
        assert f"cache: {url}" in config, "the run names the URL, not a local path made of it"
    assert json.loads((tmp_path / "sweep" / "plan.json").read_text())["cache"] == url
