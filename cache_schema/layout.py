"""Names, versions and sizing rules of the cache layout (LAYOUT.md is the prose version).

Everything that spells a path or an attribute key lives here, so the writer, the reader and
the validator cannot drift apart.
"""
from __future__ import annotations

import re
from importlib import metadata

import numpy as np

SCHEMA_VERSION = 1
KNOWN_SCHEMA_VERSIONS = (1,)
# Minor version: additions a reader of the same major version may ignore (root attribute
# `schema_minor`, absent = 0). 1.1 adds the feature-set attributes `fingerprint` and
# `fingerprint_params` (LAYOUT.md, "Fingerprint"). 1.2 writes `values` with ~2 MiB inner chunks
# instead of ~128 KiB (LAYOUT.md, "Chunking"; same codecs, so every 1.x reader reads it);
# `fuse cache upgrade` rewrites older sets.
SCHEMA_MINOR = 2

ROOT_ATTR = "emofuse_cache"  # root attributes live under this one key
UTTERANCES = "utterances"
FEATURES = "features"
STAGING = ".staging"  # half-written feature sets; never listed by readers
TRASH = ".trash"  # replaced feature sets awaiting deletion
LOCK_FILE = ".emofuse.lock"

VALUES, OFFSETS, PRESENT, FAILURES = "values", "offsets", "present", "failures"
FAILURE_COLUMNS = ("row", "utterance_id", "file", "reason")

VALUE_DTYPES = ("float16", "float32")

# Provenance keys every feature set records (values may be null where they do not apply).
FEATURE_ATTR_KEYS = (
    "modality",  # text | audio | video | other
    "encoder_kind",  # e.g. hf-text, hf-audio, hf-image, opensmile, glove, csd
    "checkpoint",  # hub id, local path or file the features came from
    "revision",  # hub commit hash, or null
    "weights_sha256",  # hash of the weights/feature file, or null
    "layers",  # hidden layers stored, e.g. [-1], or null
    "frame_rate",  # frames per second (float) or "token" or "utterance"
    "dim",
    "dtype",
    "pooling",  # "none" for sequences; "mean" etc. when an utterance is one row
    "extraction_config",  # the config block that produced the set
    "code_version",  # emofuse version that wrote it
)
# Schema 1.1: optional on read (feature sets written before 1.1 lack them: fingerprint unknown).
FINGERPRINT_KEYS = ("fingerprint", "fingerprint_params")

# Feature-set names look like "<modality>.<encoder>", e.g. text.bert-base-uncased.
FEATURE_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+\-]*$")

# Sizing. Inner chunks are what a random read decodes; shards are what lands on disk as files.
# zarr-python decodes a sharded array inner chunk by inner chunk, so the per-chunk cost
# dominates a block scan with small chunks: 64-row (128 KiB) chunks scanned at ~0.04 of raw
# read speed, 1024-row (1.5 MiB) chunks at ~2x that; the CRC32C per chunk costs little next
# to it (bench/cache_layout.py, LAYOUT.md). emofuse's own block reads bypass this (direct.py). Larger chunks make random single-utterance reads
# decode more, which is why they are not larger still.
TARGET_CHUNK_BYTES = 2 * 1024 * 1024
TARGET_SHARD_BYTES = 64 * 1024 * 1024
# Inner-chunk target of each layout version (schema minor); 1.0 and 1.1 used 128 KiB.
CHUNK_BYTES_BY_MINOR = {0: 128 * 1024, 1: 128 * 1024}


def chunk_rows(dim: int, dtype: str, minor: int = SCHEMA_MINOR) -> tuple[int, int]:
    """Rows per inner chunk and per shard for a (rows, dim) values array, as layout 1.`minor` sizes them."""
    target = CHUNK_BYTES_BY_MINOR.get(minor, TARGET_CHUNK_BYTES)
    row_bytes = max(1, dim * np.dtype(dtype).itemsize)
    inner = int(max(16, min(65536, 2 ** round(np.log2(max(1, target // row_bytes))))))
    per_shard = max(1, TARGET_SHARD_BYTES // (inner * row_bytes))
    return inner, inner * per_shard


def producer_version() -> str:
    try:
        return metadata.version("emofuse")
    except metadata.PackageNotFoundError:  # running from a source tree
        return "0+unknown"
