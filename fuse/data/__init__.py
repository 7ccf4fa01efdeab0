"""The data path of stage 2: from cache rows to the `Batch`es the fusion models read.

    spec.py           DataSpec (what a run fixes about its data), DataError, block size
    selection.py      which feature sets, splits (carving dev) and task
    metadata.py       metadata columns as model inputs
    normalisation.py  per-dimension standardisation fit on train (global / per speaker)
    dialogue.py       dialogue windows (preceding and following turns) and their features
    loader.py         FeatureData: streaming blocks -> padded batches
    readahead.py      batches built ahead in a background thread
    split_view.py     a cache under another split column (folds), nothing copied
"""
from fuse.data.loader import FeatureData
from fuse.data.metadata import MetadataEncoding
from fuse.data.normalisation import Normaliser
from fuse.data.selection import canonical_split, inspect_task, resolve_splits, select_feature_sets
from fuse.data.spec import DataError, DataSpec

__all__ = [
    "DataError",
    "DataSpec",
    "FeatureData",
    "MetadataEncoding",
    "Normaliser",
    "canonical_split",
    "inspect_task",
    "resolve_splits",
    "select_feature_sets",
]
