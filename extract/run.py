"""Job entry points of the extraction workflow: `python -m extract.run <step> ...`.

The Snakemake rules (rules/*.smk) call these; each is also usable by hand:

    table     corpus -> utterance table in the cache + one shard file per block of rows
    part      one feature set x one shard -> one part (never touches the cache)
    parts     one feature set x a group of shards -> one part each, the encoder loaded once
              (what the workflow's part jobs run; current parts are kept)
    merge     all parts of a feature set -> features/<name> in the cache (atomic swap)
    validate  cache_schema.validate + per-feature coverage -> report; prints the summary
    check-config  validate a config file and list its feature sets and shards' jobs

Choices:

* A part job reads only its shard file (rows copied out of the utterance table), so it never
  reads the cache while a table step might be rewriting it, and its output depends on
  exactly the content Snakemake's mtime check sees.
* Per-utterance problems (missing or undecodable media, empty text, a segment without
  frames) become failure records (row, utterance id, file, reason) and the rest of the shard
  is extracted; `strict` turns the first one into a job error with the same message.
  Utterances whose media the corpus adapter did not find (MELD `media_missing_reason`, an
  empty `audio_path`) are recorded without being sent to the encoder.
* Parts carry the digest of the shard file they were built from; the merge refuses (and
  removes) a part built from an older version of its shard, so a stale part can never be
  merged silently. Audio/video parts also carry the digest of their shard's media identity
  file (extract/provenance.py); a part built before a clip changed is stale in the same way.
* The merge stores the feature set's provenance fingerprint (cache schema 1.1):
  `fingerprint_params` (extract.provenance.fingerprint_params) and `fingerprint`, their hash.
* The table step reports utterances the cache has and the corpus no longer has
  (`removed_utterances`): they stay in the cache, and the run says so.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from extract.config import (
    CSD_KIND,
    CSD_MODALITIES,
    MEDIA_TIMES_ARE_OFFSETS,
    NEURAL_KINDS,
    canonical_json,
    feature_specs,
    load_config,
    plan_shards,
    shard_name,
    shard_payload,
    write_if_changed,
)

from extract.provenance import fingerprint_params, media_path, read_media_digest, write_media_identity

log = logging.getLogger("extract.run")


class ExtractionError(RuntimeError):
    """A job cannot do its work; the message names the file, utterance and problem."""


# ------------------------------------------------------------------------------ helpers


def _jsonable(value: Any) -> Any:
    """Deep copy with numpy scalars/arrays, tuples, paths and Counters made JSON-friendly."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def _write_json(path: str | os.PathLike, data: Any) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(_jsonable(data), indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _setup_logging(log_file: str | None) -> None:
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file, mode="w", encoding="utf-8"))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", handlers=handlers, force=True)


def part_path(work_dir: str | os.PathLike, feature: str, shard: str) -> Path:
    return Path(work_dir) / "parts" / feature / f"shard-{shard}.zarr"


def shard_path(work_dir: str | os.PathLike, shard: str) -> Path:
    return Path(work_dir) / "shards" / f"shard-{shard}.json"


# ------------------------------------------------------------------------------ table


def run_table(corpus: dict, cache: str, work_dir: str, shard_size: int, index_out: str) -> dict:
    """Corpus -> cache utterance table -> shard files (rewritten only when changed) + index."""
    from cache_schema import create_cache, open_cache
    from extract.corpora import load_corpus

    started = time.perf_counter()
    report: dict = {}
    table = load_corpus(corpus, report=report)
    create_cache(cache, table)  # appends new utterances; existing rows keep their place
    cached = open_cache(cache)
    n = cached.n_utterances
    columns = cached.table.columns
    removed = removed_utterances(cached.table.ids, table.ids)
    _write_json(Path(work_dir) / "removed_utterances.json", removed)
    if removed["n"]:
        log.warning("table: %s", removed["message"])
    source = str(corpus.get("path") or corpus.get("root") or "")
    offsets = MEDIA_TIMES_ARE_OFFSETS[corpus["kind"]]
    shards_dir = Path(work_dir) / "shards"
    shards_dir.mkdir(parents=True, exist_ok=True)
    entries, rewritten, media_changed = [], [], []
    for index, (start, stop) in enumerate(plan_shards(n, shard_size)):
        name = shard_name(index)
        payload = shard_payload(columns, start, stop, offsets, source)
        if write_if_changed(shard_path(work_dir, name), json.dumps(payload, ensure_ascii=False, indent=0) + "\n"):
            rewritten.append(name)
        if write_media_identity(shard_path(work_dir, name), payload["rows"]):
            media_changed.append(name)
        entries.append({"name": name, "row_start": start, "row_stop": stop, "digest": payload["digest"]})
    names = {e["name"] for e in entries}
    stale = sorted(p for p in shards_dir.glob("shard-*.json") if p.stem[len("shard-"):] not in names)
    stale += sorted(p for p in shards_dir.glob("media-*.json") if p.stem[len("media-"):] not in names)
    for path in stale:  # shard_size shrank the shard count: remove shards nothing reads
        path.unlink()
    index = {
        "cache": str(cache),
        "n_utterances": n,
        "shard_size": shard_size,
        "shards": entries,
        "corpus": corpus,
        "corpus_report": report,
        "removed_from_corpus": {"n": removed["n"], "first": removed["ids"][:10]},
        "seconds": round(time.perf_counter() - started, 3),
    }
    _write_json(index_out, index)
    log.info(
        "table: %d utterances in %s; %d shard(s) of <= %d, %d written (%s), %d unchanged%s; media changed in %d shard(s)%s",
        n, cache, len(entries), shard_size, len(rewritten), ", ".join(rewritten[:8]) + ("..." if len(rewritten) > 8 else ""),
        len(entries) - len(rewritten), f"; removed {len(stale)} stale shard file(s)" if stale else "",
        len(media_changed), f" ({', '.join(media_changed[:8])}{'...' if len(media_changed) > 8 else ''})" if media_changed else "",
    )
    return index


def removed_utterances(cached_ids, corpus_ids) -> dict:
    """Utterances in the cache that the corpus no longer has (rows are never deleted).

    They keep their row and features (feature sets index the table by row, and a cache may be
    shared by runs that still use them); stage 2 still sees them. This is reported so that it
    is never silent: in the table log, in WORK/removed_utterances.json and at the end of the run.
    """
    corpus = set(map(str, corpus_ids))
    ids = [str(uid) for uid in cached_ids if str(uid) not in corpus]
    message = ""
    if ids:
        shown = ", ".join(ids[:5]) + (f" and {len(ids) - 5} more" if len(ids) > 5 else "")
        message = (f"{len(ids)} utterance(s) in the cache are no longer in the corpus ({shown}); they stay in the cache "
                   "with their features (rows are never deleted) and stage 2 still uses them; to drop them, extract "
                   "into a new cache path")
    return {"n": len(ids), "ids": ids, "message": message}


# ------------------------------------------------------------------------------ part


def build_encoder(value: dict, device: str):
    """The encoder a feature set's value config describes, named after the feature set."""
    from extract.encoders import build_encoder as registry_build

    encoder = dict(value["encoder"])
    overrides: dict[str, Any] = {"name": value["name"]}
    if encoder["kind"] in NEURAL_KINDS:
        overrides["device"] = device
    return registry_build(encoder, **overrides)


_NOT_FOUND_PATH = re.compile(r"not found: (\S+?)(?:;|$)")


def _missing_media(row: dict, field: str, modality: str) -> tuple[str, str] | None:
    """(file, reason) when the corpus adapter found no media for this modality, else None."""
    if row.get(field):
        return None
    reason = row.get("media_missing_reason") or ""
    if reason:
        match = _NOT_FOUND_PATH.search(reason)
        return (match.group(1) if match else "", reason)
    return ("", f"no {modality} file for this utterance ({field} is empty)")


def _failure_reason(error: BaseException) -> tuple[str | None, str]:
    """(file or None, one-line reason) for an encoder/media exception."""
    from extract.encoders import EncoderInputError
    from extract.media import MediaError

    if isinstance(error, MediaError):
        return error.path, f"MediaError: {error.reason}"
    if isinstance(error, EncoderInputError):
        return None, error.reason
    return None, f"{type(error).__name__}: {error}"


class PartResult:
    """What one part job did: counts and timing, stored in the part and printed."""

    def __init__(self) -> None:
        self.ok = 0
        self.failed = 0
        self.reasons: Counter = Counter()
        self.load_seconds = 0.0
        self.encode_seconds = 0.0
        self.write_seconds = 0.0
        self.extra: dict[str, Any] = {}


def _record_failure(writer, result: PartResult, row: int, uid: str, file: str, reason: str, strict: bool, where: str) -> None:
    if strict:
        raise ExtractionError(f"{where}: utterance {uid!r} (row {row}, file {file or '-'}): {reason} [strict: true]")
    writer.fail(row, uid, file, reason)
    result.failed += 1
    result.reasons[reason.split(":")[0][:60]] += 1


def _encode_rows(value, runtime, shard, writer, result, where, encoder=None) -> dict:
    """Run a neural/opensmile/glove encoder over the shard's rows; returns provenance."""
    import torch

    from extract.batching import encode_utterances
    from extract.encoders import Utterance

    torch.set_num_threads(int(runtime["threads"]))
    if encoder is None:
        started = time.perf_counter()
        encoder = build_encoder(value, runtime["device"])
        result.load_seconds = time.perf_counter() - started
    writer.ensure(int(encoder.dim))
    modality = encoder.modality
    media_field = {"audio": "audio_path", "video": "video_path"}.get(modality)
    offsets = bool(shard["media_times_are_offsets"])
    strict = bool(runtime["strict"])

    rows, utterances = [], []
    for i, record in enumerate(shard["rows"]):
        row = shard["row_start"] + i
        if media_field:
            missing = _missing_media(record, media_field, modality)
            if missing is not None:
                _record_failure(writer, result, row, record["id"], missing[0], missing[1], strict, where)
                continue
        elif not (record.get("text") or "").strip() and record.get("text_missing_reason"):
            _record_failure(writer, result, row, record["id"], shard["source"], f"no text: {record['text_missing_reason']}", strict, where)
            continue
        rows.append(row)
        utterances.append(
            Utterance(
                utterance_id=record["id"],
                text=record.get("text"),
                audio_path=record.get("audio_path") or None,
                video_path=record.get("video_path") or None,
                start=record.get("start") if offsets else None,
                end=record.get("end") if offsets else None,
            )
        )
    started = time.perf_counter()
    timings: dict = {}
    results = encode_utterances(
        encoder, utterances, max_cost=runtime["max_cost"], max_batch=runtime["max_batch"],
        num_workers=int(runtime["num_workers"]), progress=True, timings=timings,
    )
    try:
        for item in results:
            row, utterance = rows[item.index], utterances[item.index]
            if item.ok:
                writer.put(row, item.features)
                result.ok += 1
                continue
            file, reason = _failure_reason(item.error)
            if file is None:
                file = (getattr(utterance, media_field) if media_field else shard["source"]) or ""
            _record_failure(writer, result, row, utterance.utterance_id, file, reason, strict, where)
    finally:
        results.close()  # stops DataLoader workers when strict mode raised mid-way
    result.encode_seconds = time.perf_counter() - started
    result.extra["forward_seconds"] = round(timings.get("forward_seconds", 0.0), 3)  # encode_batch alone
    result.extra["device"] = getattr(encoder, "device", "cpu")
    return encoder.provenance()


def _csd_rows(value, runtime, shard, writer, result, where, encoder=None) -> dict:
    """Cut a CMU-MOSEI computational sequence to the shard's segments (no model)."""
    from tqdm.auto import tqdm

    from cache_schema import UtteranceTable
    from extract.corpora.mosei import MOSEI_MODALITIES, ComputationalSequence, iter_mosei_segment_features

    options = value["encoder"]
    modality = MOSEI_MODALITIES[options["modality"]]
    root = Path(options["root"]).expanduser()
    file = Path(options.get("file") or modality.file_name)
    file = file if file.is_absolute() else root / file
    strict = bool(runtime["strict"])
    started = time.perf_counter()
    records = shard["rows"]
    missing_cols = [c for c in ("video_id", "start", "end") if records and c not in records[0]]
    if missing_cols:
        raise ExtractionError(f"{where}: the utterance table has no {missing_cols} column(s); csd features need a mosei_csd corpus")
    table = UtteranceTable.from_records(
        [{"id": r["id"], "start": r["start"], "end": r["end"], "video_id": r["video_id"]} for r in records]
    )
    counts = Counter()
    with ComputationalSequence(file) as csd:
        root_name = csd.root_name
    bar = tqdm(total=len(records), unit="utt", desc=value["name"])
    try:
        for item in iter_mosei_segment_features(root, table, options["modality"], str(file)):
            row = shard["row_start"] + item.row
            counts["neg_inf"] += item.n_neg_inf
            counts["pos_inf"] += item.n_pos_inf
            counts["nan"] += item.n_nan
            if item.array is None:
                _record_failure(writer, result, row, records[item.row]["id"], str(file), item.note, strict, where)
            else:
                writer.put(row, item.array)
                result.ok += 1
            bar.update(1)
    finally:
        bar.close()
    result.encode_seconds = time.perf_counter() - started
    result.extra["device"] = "cpu"
    stat = file.stat()
    return {
        "modality": CSD_MODALITIES[options["modality"]],
        "encoder_kind": CSD_KIND,
        "name": value["name"],
        "checkpoint": str(file.resolve()),
        "revision": None,
        "weights_sha256": None,  # filled by the merge (one pass over a possibly huge file)
        "layers": None,
        "frame_rate": modality.rate_hz if modality.rate_hz is not None else "token",
        "dim": modality.dim,
        "pooling": "none",
        "source_file": str(file.resolve()),
        "source_size": stat.st_size,
        "source_mtime": stat.st_mtime,
        "root_name": root_name,
        "csd_modality": modality.name,
        "unit": modality.unit,
        "segment_rule": "frames whose half-open [s, e) intersects [seg_start, seg_end); no alignment, no padding",
        "run_stats": {"nonfinite_replaced_by_zero": dict(counts)},
    }


def run_part(value: dict, runtime: dict, shard_file: str, out: str, encoder=None, load_seconds: float = 0.0) -> PartResult:
    """Extract one feature set over one shard into the part `out` (written atomically).

    `encoder`: an already built encoder for `value` (a job over several shards, benchmarks);
    default: build it. `load_seconds`: what building that encoder took, recorded in this part.
    """
    from cache_schema import FeaturePartWriter

    with open(shard_file, encoding="utf-8") as handle:
        shard = json.load(handle)
    where = f"{value['name']} {Path(shard_file).stem}"
    out = Path(out)
    for leftover in out.parent.glob(out.name + ".tmp-*"):  # from a killed run of this job
        shutil.rmtree(leftover, ignore_errors=True)
    kind = value["encoder"]["kind"]
    if kind == CSD_KIND:
        from extract.corpora.mosei import MOSEI_MODALITIES

        dim = MOSEI_MODALITIES[value["encoder"]["modality"]].dim
        build = _csd_rows
    else:
        dim = None
        build = _encode_rows
    result = PartResult()
    result.load_seconds = load_seconds
    writer = _LazyWriter(lambda d: FeaturePartWriter(out, shard["row_start"], shard["row_stop"], d, value["dtype"]), dim)
    try:
        provenance = build(value, runtime, shard, writer, result, where, encoder=encoder)
        writer.ensure(int(provenance["dim"]))
    except BaseException:
        writer.abort()  # the unfinished part goes; a rerun starts this shard afresh
        raise
    n = shard["row_stop"] - shard["row_start"]
    stats = {
        "utterances": n,
        "ok": result.ok,
        "failed": result.failed,
        "failure_reasons": dict(result.reasons),
        "load_seconds": round(result.load_seconds, 3),
        "encode_seconds": round(result.encode_seconds, 3),
        "peak_buffer_bytes": writer.peak_held_bytes,  # feature values held in memory at once (bounded)
        **result.extra,
    }
    started = time.perf_counter()
    writer.close({"provenance": _jsonable(provenance), "value_config": value, "runtime": runtime, "shard_digest": shard["digest"],
                  "media_digest": read_media_digest(shard_file), "stats": stats})
    result.write_seconds = time.perf_counter() - started
    rate = n / max(result.encode_seconds, 1e-9)
    log.info("%s: %d utterances, %d extracted, %d failed, %.1f s encoding (%.1f utt/s) + %.1f s loading + %.1f s writing -> %s",
             where, n, result.ok, result.failed, result.encode_seconds, rate, result.load_seconds, result.write_seconds, out)
    return result


def part_is_current(path: Path, value: dict, shard_file: str | os.PathLike) -> bool:
    """True when the part at `path` was built from this shard file (and its media) with this value config."""
    import zarr

    if not (Path(path) / "zarr.json").is_file():
        return False
    meta = dict(zarr.open_group(str(path), mode="r").attrs).get("attrs", {})
    shard_digest = json.loads(Path(shard_file).read_text(encoding="utf-8"))["digest"]
    uses_media = value["encoder"]["kind"] != CSD_KIND and feature_modality(value) in ("audio", "video")
    return (meta.get("shard_digest") == shard_digest and canonical_json(meta.get("value_config")) == canonical_json(value)
            and (not uses_media or meta.get("media_digest") == read_media_digest(shard_file)))


def run_parts(value: dict, runtime: dict, shard_files: list[str], parts_dir: str, report_out: str) -> dict:
    """One job over a group of shards: one part per shard, the encoder loaded once.

    Start-up and model load are paid once per job instead of once per shard (docs/workflow.md,
    "Job grouping"). A part that is already current (built from the same shard file, media and
    value config) is kept, so a rerun of the job after a kill or a change to one shard redoes
    only what is missing or stale; when nothing is, the encoder is not even loaded. The
    report (the job's declared output) lists what was extracted and what was kept.
    """
    started = time.perf_counter()
    encoder, load_seconds, entries = None, 0.0, []
    for shard_file in shard_files:
        out = Path(parts_dir) / f"{Path(shard_file).stem}.zarr"
        if part_is_current(out, value, shard_file):
            log.info("%s %s: part is current, kept (%s)", value["name"], Path(shard_file).stem, out)
            entries.append({"shard": str(shard_file), "part": str(out), "extracted": False})
            continue
        load = 0.0
        if encoder is None and value["encoder"]["kind"] != CSD_KIND:
            load_started = time.perf_counter()
            encoder = build_encoder(value, runtime["device"])
            load = load_seconds = time.perf_counter() - load_started
        result = run_part(value, runtime, shard_file, str(out), encoder=encoder, load_seconds=load)
        entries.append({"shard": str(shard_file), "part": str(out), "extracted": True, "encode_seconds": round(result.encode_seconds, 3),
                        "forward_seconds": result.extra.get("forward_seconds"), "write_seconds": round(result.write_seconds, 3)})
    report = {"feature": value["name"], "shards": len(shard_files), "extracted": sum(e["extracted"] for e in entries),
              "load_seconds": round(load_seconds, 3), "seconds": round(time.perf_counter() - started, 3), "parts": entries}
    _write_json(report_out, report)
    log.info("%s: %d shard(s) in this job, %d extracted, %d kept; %.1f s loading, %.1f s in all",
             value["name"], len(shard_files), report["extracted"], len(shard_files) - report["extracted"], load_seconds, report["seconds"])
    return report


class _LazyWriter:
    """A FeaturePartWriter created once the encoder (and so `dim`) is known.

    The writer writes rows as they complete (bounded memory; see FeaturePartWriter), so
    failures go to it at once; any recorded before it exists wait here. It sorts its
    failure table by row, so the part reads like the corpus however results arrived.
    """

    def __init__(self, factory, dim: int | None):
        self._factory, self._writer = factory, None
        self._failures: list[tuple[int, str, str, str]] = []
        if dim is not None:
            self.ensure(dim)

    def ensure(self, dim: int) -> None:
        if self._writer is None:
            self._writer = self._factory(dim)
            for failure in self._failures:
                self._writer.fail(*failure)
            self._failures = []

    def put(self, row: int, array: np.ndarray) -> None:
        self._writer.put(row, array)

    def fail(self, row: int, uid: str, file: str, reason: str) -> None:
        if self._writer is None:
            self._failures.append((row, uid, file, reason))
        else:
            self._writer.fail(row, uid, file, reason)

    def close(self, attrs: dict) -> Path:
        return self._writer.close(attrs)

    @property
    def peak_held_bytes(self) -> int:
        return self._writer.peak_held_bytes

    def abort(self) -> None:
        if self._writer is not None:
            self._writer.abort()


# ------------------------------------------------------------------------------ merge


IDENTITY_KEYS = ("encoder_kind", "checkpoint", "weights_sha256", "revision", "dim", "frame_rate", "layers", "source_size", "source_mtime")


def _sum_stats(a: Any, b: Any) -> Any:
    if isinstance(a, dict) and isinstance(b, dict):
        return {k: _sum_stats(a.get(k), b.get(k)) if k in a and k in b else (a[k] if k in a else b[k]) for k in {**a, **b}}
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return a + b
    return a  # lists/strings: keep the first part's (e.g. most_common_oov)


def feature_modality(value: dict) -> str:
    kind = value["encoder"]["kind"]
    if kind == CSD_KIND:
        return CSD_MODALITIES[value["encoder"]["modality"]]
    from extract.config import encoder_class

    return encoder_class(kind).modality


def _shard_payloads(work_dir: str, index: dict) -> list[tuple[dict, dict | None]]:
    """(shard payload, media identity payload or None) per shard, in row order."""
    out = []
    for entry in index["shards"]:
        shard_file = shard_path(work_dir, entry["name"])
        shard = json.loads(shard_file.read_text(encoding="utf-8"))
        media_file = media_path(shard_file)
        media = json.loads(media_file.read_text(encoding="utf-8")) if media_file.is_file() else None
        out.append((shard, media))
    return out


def run_merge(value: dict, cache: str, index_file: str, work_dir: str, compression: str, out: str) -> dict:
    """Merge every part of one feature set into the cache and write its summary JSON."""
    import zarr

    from cache_schema import compute_fingerprint, merge_parts
    from extract.encoders.base import sha256_file

    with open(index_file, encoding="utf-8") as handle:
        index = json.load(handle)
    name = value["name"]
    started = time.perf_counter()
    uses_media = value["encoder"]["kind"] != CSD_KIND and feature_modality(value) in ("audio", "video")
    parts, metas, stale = [], [], []
    for entry in index["shards"]:
        path = part_path(work_dir, name, entry["name"])
        if not path.is_dir():
            raise ExtractionError(f"{name}: part {path} is missing (shard {entry['name']}); rerun the workflow")
        attrs = dict(zarr.open_group(str(path), mode="r").attrs)
        meta = attrs.get("attrs", {})
        media_stale = uses_media and meta.get("media_digest") != read_media_digest(shard_path(work_dir, entry["name"]))
        if meta.get("shard_digest") != entry["digest"] or canonical_json(meta.get("value_config")) != canonical_json(value) or media_stale:
            stale.append(path)
            continue
        parts.append(path)
        metas.append({**meta, "failures": attrs.get("failures", [])})
    if stale:
        for path in stale:
            shutil.rmtree(path, ignore_errors=True)
        raise ExtractionError(
            f"{name}: {len(stale)} part(s) were built from an older shard file, media or feature config and have been "
            f"removed ({', '.join(str(p) for p in stale[:5])}); rerun the workflow to rebuild them"
        )
    first = metas[0]["provenance"] if metas else {}
    for meta, path in zip(metas[1:], parts[1:]):
        for key in IDENTITY_KEYS:
            if meta["provenance"].get(key) != first.get(key):
                raise ExtractionError(
                    f"{name}: parts disagree on {key} ({parts[0]}: {first.get(key)!r}, {path}: {meta['provenance'].get(key)!r}); "
                    "the encoder changed between jobs. Delete the parts folder and rerun."
                )
    provenance = dict(first)
    run_stats: dict = {}
    for meta in metas:
        run_stats = _sum_stats(run_stats, meta["provenance"].get("run_stats") or {})
    if value["encoder"]["kind"] == CSD_KIND and provenance.get("source_file"):
        provenance["weights_sha256"] = sha256_file(provenance["source_file"])
    stats = [meta["stats"] for meta in metas]
    n = sum(s["utterances"] for s in stats)
    ok = sum(s["ok"] for s in stats)
    failed = sum(s["failed"] for s in stats)
    encode_seconds = sum(s["encode_seconds"] for s in stats)
    load_seconds = sum(s["load_seconds"] for s in stats)
    reasons: Counter = Counter()
    for s in stats:
        reasons.update(s.get("failure_reasons", {}))
    devices = sorted({s.get("device", "cpu") for s in stats})
    extraction = {
        "parts": len(parts),
        "shard_size": index["shard_size"],
        "utterances": n,
        "extracted": ok,
        "failed": failed,
        "encode_seconds": round(encode_seconds, 3),
        "load_seconds": round(load_seconds, 3),
        "devices": devices,
        "runtime": metas[0]["runtime"] if metas else {},
    }
    attrs = {
        **provenance,
        "run_stats": run_stats,
        "encoder_config": provenance.get("extraction_config"),
        "extraction_config": value,
        "extraction": extraction,
    }
    if value["encoder"]["kind"] == CSD_KIND:
        attrs["nonfinite_replaced_by_zero"] = run_stats.get("nonfinite_replaced_by_zero", {})
    attrs.pop("dtype", None)  # the stored dtype comes from the parts, not the compute dtype
    # CPU parts compute in float32, CUDA parts under bf16/fp16 autocast: the values differ, so the
    # compute dtypes of the parts (all of them, should a run mix devices) are fingerprinted.
    compute = sorted({str(m["provenance"]["compute_dtype"]) for m in metas if m["provenance"].get("compute_dtype")})
    params = _jsonable(fingerprint_params(value, {**provenance, "compute_dtype": compute or None}, _shard_payloads(work_dir, index)))
    attrs["fingerprint_params"] = params
    attrs["fingerprint"] = compute_fingerprint(params)
    merge_parts(cache, name, parts, _jsonable(attrs), compression=None if compression == "none" else compression)
    failures = [f for meta in metas for f in meta["failures"]]
    summary = {
        "feature": name,
        "fingerprint": attrs["fingerprint"],
        "modality": provenance.get("modality"),
        "dim": provenance.get("dim"),
        "dtype": value["dtype"],
        "utterances": n,
        "extracted": ok,
        "failed": failed,
        "coverage": ok / n if n else 0.0,
        "encode_seconds": round(encode_seconds, 3),
        "load_seconds": round(load_seconds, 3),
        "utterances_per_second": round(n / encode_seconds, 2) if encode_seconds > 0 else None,
        "devices": devices,
        "failure_reasons": dict(reasons.most_common()),
        "first_failures": failures[:5],
        "merge_seconds": round(time.perf_counter() - started, 3),
        "nonfinite_replaced_by_zero": attrs.get("nonfinite_replaced_by_zero"),
        # said again at the end of every run: features of an untrained encoder are no baseline
        "untrained_weights": provenance.get("weights") if provenance.get("pretrained") is False else None,
    }
    _write_json(out, summary)
    log.info("%s: merged %d part(s), %d/%d utterances extracted, %d failed -> %s", name, len(parts), ok, n, failed, cache)
    return summary


# ------------------------------------------------------------------------------ validate


def format_summary(summaries: list[dict], n_utterances: int) -> str:
    """The end-of-run table: coverage, failures and time per feature set."""
    header = f"{'feature set':<28} {'dim':>5} {'coverage':>18} {'failed':>7} {'encode s':>9} {'utt/s':>8}  device"
    lines = [f"extraction summary ({n_utterances} utterances)", header, "-" * len(header)]
    for s in summaries:
        coverage = f"{s['extracted']}/{s['utterances']} ({100 * s['coverage']:.1f}%)"
        rate = "-" if s["utterances_per_second"] is None else f"{s['utterances_per_second']:.1f}"
        lines.append(
            f"{s['feature']:<28} {s['dim'] or '-':>5} {coverage:>18} {s['failed']:>7} {s['encode_seconds']:>9.1f} {rate:>8}  {','.join(s['devices'])}"
        )
        for reason, count in list(s["failure_reasons"].items())[:3]:
            lines.append(f"    {count:>6} x {reason}")
        if s["first_failures"]:
            f = s["first_failures"][0]
            lines.append(f"    first failure: {f['utterance_id']} ({f['file'] or '-'}): {f['reason'][:160]}")
        if s.get("untrained_weights"):
            lines.append(f"    NOTE weights: {s['untrained_weights']}")
        if s.get("nonfinite_replaced_by_zero"):
            lines.append(f"    non-finite values replaced by 0: {s['nonfinite_replaced_by_zero']}")
    return "\n".join(lines)


def run_validate(cache: str, features: list[str], merged: list[str], deep: bool, out: str, quiet: bool = False) -> dict:
    """Validate the cache and the configured sets; write the report; print the summary unless quiet.

    (Under Snakemake the job is quiet: the Snakefile's onsuccess handler prints the summary
    from the report once, at the very end of the run.)
    """
    from cache_schema import CacheValidationError, validate

    try:
        opened = validate(cache, deep=deep)
    except CacheValidationError as err:
        raise ExtractionError(str(err)) from None
    n = opened.n_utterances
    problems = []
    for name in features:
        if name not in opened:
            problems.append(f"feature set {name!r} is not in the cache")
        elif len(opened[name]) != n:
            problems.append(f"feature set {name!r} covers {len(opened[name])} utterances, the table has {n}")
    if problems:
        raise ExtractionError(f"{cache}: " + "; ".join(problems))
    summaries = []
    for path in merged:
        with open(path, encoding="utf-8") as handle:
            summaries.append(json.load(handle))
    report = {"cache": str(cache), "n_utterances": n, "deep": deep, "features": summaries, "other_feature_sets": sorted(set(opened.feature_names()) - set(features))}
    _write_json(out, report)
    log.info("cache %s is valid; report: %s", cache, out)
    if not quiet:
        print(format_summary(summaries, n), flush=True)
    return report


# ------------------------------------------------------------------------------ CLI


def _json_arg(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"not valid JSON ({err})") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m extract.run", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="step", required=True)

    table = sub.add_parser("table", help="corpus -> utterance table + shard files")
    table.add_argument("--corpus", type=_json_arg, required=True, help="corpus spec (JSON)")
    table.add_argument("--cache", required=True)
    table.add_argument("--work-dir", required=True)
    table.add_argument("--shard-size", type=int, required=True)
    table.add_argument("--index", required=True, help="index JSON to write")
    table.add_argument("--log")

    part = sub.add_parser("part", help="one feature set x one shard -> a part")
    part.add_argument("--feature", type=_json_arg, required=True, help="value config of the feature set (JSON)")
    part.add_argument("--runtime", type=_json_arg, required=True, help="device/batch/threads/workers/strict (JSON)")
    part.add_argument("--shard", required=True, help="shard file")
    part.add_argument("--out", required=True, help="part to write (a Zarr folder)")
    part.add_argument("--log")

    parts = sub.add_parser("parts", help="one feature set x a group of shards -> one part each, the encoder loaded once")
    parts.add_argument("--feature", type=_json_arg, required=True, help="value config of the feature set (JSON)")
    parts.add_argument("--runtime", type=_json_arg, required=True, help="device/batch/threads/workers/strict (JSON)")
    parts.add_argument("--shards", nargs="+", required=True, help="shard files")
    parts.add_argument("--parts-dir", required=True, help="folder of the parts (<shard file stem>.zarr each)")
    parts.add_argument("--report", required=True, help="job report JSON to write (the job's output)")
    parts.add_argument("--log")

    merge = sub.add_parser("merge", help="parts -> features/<name> in the cache")
    merge.add_argument("--feature", type=_json_arg, required=True)
    merge.add_argument("--cache", required=True)
    merge.add_argument("--index", required=True)
    merge.add_argument("--work-dir", required=True)
    merge.add_argument("--compression", default="none", choices=["none", "zstd"])
    merge.add_argument("--out", required=True, help="summary JSON to write")
    merge.add_argument("--log")

    val = sub.add_parser("validate", help="validate the cache, print the summary")
    val.add_argument("--cache", required=True)
    val.add_argument("--features", type=_json_arg, required=True, help="JSON list of configured feature sets")
    val.add_argument("--merged", nargs="*", default=[], help="merge summaries")
    val.add_argument("--deep", action="store_true")
    val.add_argument("--out", required=True)
    val.add_argument("--log")
    val.add_argument("--quiet", action="store_true", help="summary to the log only, not to stdout")

    check = sub.add_parser("check-config", help="validate a config file and list its feature sets")
    check.add_argument("config")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.step == "check-config":
        from extract.config import ConfigError

        try:
            config = load_config(args.config)
        except ConfigError as err:
            print(err, file=sys.stderr)
            return 2
        for spec in feature_specs(config).values():
            print(f"{spec.name}: {spec.kind} ({spec.modality}), dtype {spec.dtype}, device {spec.device}, gpu={int(spec.uses_gpu)}")
        return 0
    _setup_logging(getattr(args, "log", None))
    try:
        if args.step == "table":
            run_table(args.corpus, args.cache, args.work_dir, args.shard_size, args.index)
        elif args.step == "part":
            run_part(args.feature, args.runtime, args.shard, args.out)
        elif args.step == "parts":
            run_parts(args.feature, args.runtime, args.shards, args.parts_dir, args.report)
        elif args.step == "merge":
            run_merge(args.feature, args.cache, args.index, args.work_dir, args.compression, args.out)
        elif args.step == "validate":
            run_validate(args.cache, args.features, args.merged, args.deep, args.out, quiet=args.quiet)
    except Exception as err:  # one clear line on stderr and in the log; traceback in the log
        log.debug("traceback", exc_info=True)
        log.error("%s failed: %s: %s", args.step, type(err).__name__, err)
        logging.getLogger().handlers[-1].flush()
        if args.log:
            import traceback

            with open(args.log, "a", encoding="utf-8") as handle:
                traceback.print_exc(file=handle)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
