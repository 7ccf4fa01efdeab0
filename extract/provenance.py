"""Media identity and feature-set fingerprints (cache schema 1.1; docs/workflow.md, "Reruns").

Media identity
    The table step writes, next to each shard file, ``shards/media-NNNNN.json``: for every row
    the size and modification time (ns) of its audio/video file, or ``null`` when the file is
    missing. It is rewritten only when its content changes, and it is an input of the shard's
    audio and video part jobs, so a clip replaced, repaired or added re-extracts exactly its
    shard (and its failure record is replaced by the new outcome). Size + mtime, not a content
    hash: the table step runs whenever a media file or folder is newer than its output, and
    hashing a 10 GB corpus each time would cost minutes, whereas ``stat`` costs milliseconds.
    (Not seen: a file rewritten in place with the same size and its old mtime restored, e.g.
    ``cp -p`` / ``rsync -t`` of a same-size file; ``touch`` it, or ``--forcerun table``.)

Fingerprint
    :func:`fingerprint_params` collects everything that determines a feature set's values;
    ``cache_schema.compute_fingerprint`` hashes it (sha256 of canonical JSON). The code version
    of an encoder is the sha256 of the *syntax tree* (docstrings dropped) of its module, of
    ``extract/encoders/base.py`` and of the media decoder its modality uses, so comments and
    formatting do not change it but any code change does (and is named by ``diff_params``).
"""
from __future__ import annotations

import ast
import hashlib
import inspect
import json
import logging
import os
import re
from pathlib import Path
from typing import Any, Iterable, Mapping

from extract.config import CSD_KIND, CSD_MODALITIES, canonical_json, write_if_changed

FINGERPRINT_FORMAT = 1
MEDIA_FORMAT = 1
MEDIA_FIELDS = ("audio_path", "video_path")
REPO = Path(__file__).resolve().parent.parent
# Decoders each modality's encoders read their input with (hashed into the code version).
MEDIA_MODULES = {"audio": ("extract/media/audio.py",), "video": ("extract/media/video.py",), "text": ()}
# Arguments that do not change the values (name) or are runtime settings (device).
NOT_FINGERPRINTED = ("name", "device")
_NOT_FOUND_PATH = re.compile(r"not found: (\S+?)(?:;|$)")


# ------------------------------------------------------------------------------ media identity


def media_path(shard_file: str | os.PathLike) -> Path:
    """shards/shard-00003.json -> shards/media-00003.json."""
    shard_file = Path(shard_file)
    return shard_file.with_name("media-" + shard_file.name[len("shard-"):])


def _stat(path: str) -> list[int] | None:
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return [int(stat.st_size), int(stat.st_mtime_ns)]


def media_payload(rows: Iterable[Mapping[str, Any]]) -> dict:
    """{"format", "rows": [[id, {field: [path, size, mtime_ns] | [path, null]}]], "digest"}."""
    out = []
    for record in rows:
        files = {}
        for field in MEDIA_FIELDS:
            path = record.get(field) or ""
            if path:
                files[field] = [path, *(_stat(path) or [None])]
        out.append([record["id"], files])
    payload = {"format": MEDIA_FORMAT, "rows": out}
    payload["digest"] = hashlib.sha256(canonical_json(payload).encode("utf-8")).hexdigest()
    return payload


def write_media_identity(shard_file: str | os.PathLike, rows: Iterable[Mapping[str, Any]]) -> bool:
    """Write the shard's media identity file if its content changed; True if written."""
    payload = media_payload(rows)
    return write_if_changed(media_path(shard_file), json.dumps(payload, ensure_ascii=False, indent=0) + "\n")


def read_media_digest(shard_file: str | os.PathLike) -> str | None:
    path = media_path(shard_file)
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8")).get("digest")


def corpus_media_inputs(corpus: Mapping[str, Any]) -> list[str]:
    """Media files and folders of a corpus, for the table rule's inputs (Snakemake mtime check).

    Every existing media file (an in-place rewrite makes it newer) and the folder of every
    media file, found or not (a file created or renamed into place makes its folder newer; a
    folder that does not exist yet is represented by its nearest existing parent).
    Parses the corpus (MELD: ~1 s for 14k rows); a corpus that cannot be loaded gives [] and
    the table job reports the problem.
    """
    from extract.corpora import load_corpus

    logger = logging.getLogger("extract.corpora")
    level = logger.level
    logger.setLevel(logging.ERROR)  # the table job logs the adapter's warnings
    try:
        table = load_corpus(dict(corpus))
    except Exception:  # noqa: BLE001 - reported by the table job, with its file and row
        return []
    finally:
        logger.setLevel(level)
    files: set[str] = set()
    folders: set[str] = set()
    columns = table.columns
    for field in MEDIA_FIELDS:
        for value in columns.get(field, ()):
            if value:
                files.add(str(value))
    for reason in columns.get("media_missing_reason", ()):
        for match in _NOT_FOUND_PATH.finditer(str(reason or "")):
            folders.add(os.path.dirname(match.group(1)))
    existing = {f for f in files if os.path.isfile(f)}
    folders |= {os.path.dirname(f) for f in files}
    return sorted(existing) + sorted({_existing_ancestor(d) for d in folders if d} - {None})


def _existing_ancestor(folder: str) -> str | None:
    """The folder itself, or its nearest existing parent (creating the folder changes that one)."""
    folder = os.path.abspath(folder)
    while not os.path.isdir(folder):
        parent = os.path.dirname(folder)
        if parent == folder:
            return None
        folder = parent
    return folder


# ------------------------------------------------------------------------------ fingerprint


def code_digest(relative: str) -> str | None:
    """sha256 of a module's syntax tree without docstrings (None if the file is absent)."""
    path = REPO / relative
    try:
        source = path.read_text(encoding="utf-8")
    except OSError:
        return None
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return hashlib.sha256(source.encode("utf-8")).hexdigest()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant) \
                and isinstance(body[0].value.value, str):
            node.body = body[1:] or [ast.Pass()]
    return hashlib.sha256(ast.dump(tree, annotate_fields=True, include_attributes=False).encode("utf-8")).hexdigest()


def encoder_code_files(kind: str) -> list[str]:
    """Source files (repo-relative) whose code decides an encoder kind's values."""
    if kind == CSD_KIND:
        return ["extract/corpora/mosei.py"]
    from extract.config import encoder_class

    cls = encoder_class(kind)
    files = {os.path.relpath(inspect.getsourcefile(cls), REPO), "extract/encoders/base.py"}
    files.update(MEDIA_MODULES.get(getattr(cls, "modality", ""), ()))
    files.update(getattr(cls, "fingerprint_code", ()))  # extra modules an encoder declares
    return sorted(files)


def encoder_settings(encoder: Mapping[str, Any]) -> dict:
    """Every constructor parameter of the encoder, configured or default (minus name/device)."""
    options = {k: v for k, v in encoder.items() if k != "kind"}
    if encoder["kind"] == CSD_KIND:
        return options
    from extract.config import encoder_class

    signature = inspect.signature(encoder_class(encoder["kind"]).__init__)
    settings = {}
    for name, parameter in signature.parameters.items():
        if name == "self" or name in NOT_FINGERPRINTED or parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            continue
        value = options[name] if name in options else parameter.default
        settings[name] = None if value is inspect.Parameter.empty else _json_value(value)
    return settings


def _json_value(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_json_value(v) for v in value]
    if isinstance(value, (list, dict, str, int, float, bool)) or value is None:
        return json.loads(json.dumps(value, default=str))
    return str(value)


def utterance_identity(modality: str, kind: str, shards: list[tuple[dict, dict | None]]) -> dict:
    """{"n", "sha256"} over each utterance's id and the identity of the input it was extracted from.

    text: sha256 of the text; audio/video: path, size, mtime_ns (+ start/end); csd: video id,
    start, end (the .csd file itself is `weights_sha256`).
    """
    digest = hashlib.sha256()
    n = 0
    field = {"audio": "audio_path", "video": "video_path"}.get(modality)
    for shard, media in shards:
        media_rows = {uid: files for uid, files in (media or {}).get("rows", [])}
        for record in shard["rows"]:
            if kind == CSD_KIND:
                item = [record["id"], record.get("video_id"), record.get("start"), record.get("end")]
            elif field is None:
                item = [record["id"], hashlib.sha256((record.get("text") or "").encode("utf-8")).hexdigest()]
            else:
                times = [record.get("start"), record.get("end")] if shard.get("media_times_are_offsets") else [None, None]
                item = [record["id"], media_rows.get(record["id"], {}).get(field) or record.get(field) or None, *times]
            digest.update((canonical_json(item) + "\n").encode("utf-8"))
            n += 1
    return {"n": n, "sha256": digest.hexdigest()}


def checkpoint_files_digest(folder: str | None, max_bytes: int = 64 << 20) -> str | None:
    """sha256 over a local checkpoint folder's non-weight files (tokenizer, configs, vocab...).

    `weights_sha256` covers the weights; a changed vocabulary or preprocessor config changes the
    values too. None for hub checkpoints (their `revision` pins every file) and non-folders.
    """
    if not folder or not os.path.isdir(folder):
        return None
    from extract.encoders.base import WEIGHT_SUFFIXES, sha256_file

    root = Path(folder)
    lines = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        if path.name.endswith(WEIGHT_SUFFIXES) or path.stat().st_size > max_bytes or any(part.startswith(".") for part in path.relative_to(root).parts):
            continue
        lines.append(f"{path.relative_to(root)} {sha256_file(path)}\n")
    return hashlib.sha256("".join(lines).encode("utf-8")).hexdigest()


def fingerprint_params(value: Mapping[str, Any], provenance: Mapping[str, Any], shards: list[tuple[dict, dict | None]]) -> dict:
    """What a feature set's values depend on (hashed by cache_schema.compute_fingerprint).

    `value`: the feature set's value config (name, encoder, dtype); `provenance`: the parts'
    provenance (checkpoint, revision, weights hash, layers, frame rate, dim); `shards`: (shard
    payload, media identity payload) per shard, in row order.
    """
    kind = value["encoder"]["kind"]
    modality = CSD_MODALITIES[value["encoder"]["modality"]] if kind == CSD_KIND else provenance.get("modality")
    return {
        "format": FINGERPRINT_FORMAT,
        "encoder_kind": kind,
        "encoder": encoder_settings(value["encoder"]),
        "dtype": value["dtype"],
        "checkpoint": provenance.get("checkpoint"),
        "revision": provenance.get("revision"),
        "weights_sha256": provenance.get("weights_sha256"),
        "layers": provenance.get("layers"),
        "frame_rate": provenance.get("frame_rate"),
        "dim": provenance.get("dim"),
        "compute_dtype": provenance.get("compute_dtype"),
        "checkpoint_files_sha256": checkpoint_files_digest(provenance.get("checkpoint_path")),
        "code": {path: code_digest(path) for path in encoder_code_files(kind)},
        "utterances": utterance_identity(modality, kind, shards),
    }
