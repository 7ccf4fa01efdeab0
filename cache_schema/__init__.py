"""The emofuse cache contract: a Zarr v3 store of ragged per-utterance features.

Stage 1 writes it, stage 2 reads it, and nothing else defines its layout. See LAYOUT.md in
this folder for the byte-level description.
"""
from .errors import CacheError, CacheValidationError, FeatureSetNotFound, NotACacheError, SchemaVersionError
from .fingerprint import compute_fingerprint, diff_params
from .layout import SCHEMA_MINOR, SCHEMA_VERSION
from .reader import Cache, FeatureSet, open_cache
from .table import NO_LABEL, UtteranceTable
from .upgrade import outdated_feature_sets, upgrade_cache
from .validate import check_feature_sets, validate
from .writer import (
    FeaturePartWriter,
    cache_lock,
    create_cache,
    delete_feature_set,
    is_cache,
    merge_parts,
    write_feature_set,
    write_utterances,
)

__all__ = [
    "SCHEMA_MINOR",
    "SCHEMA_VERSION",
    "NO_LABEL",
    "Cache",
    "CacheError",
    "CacheValidationError",
    "FeaturePartWriter",
    "FeatureSet",
    "FeatureSetNotFound",
    "NotACacheError",
    "SchemaVersionError",
    "UtteranceTable",
    "cache_lock",
    "check_feature_sets",
    "compute_fingerprint",
    "diff_params",
    "create_cache",
    "delete_feature_set",
    "is_cache",
    "merge_parts",
    "open_cache",
    "outdated_feature_sets",
    "upgrade_cache",
    "validate",
    "write_feature_set",
    "write_utterances",
]
