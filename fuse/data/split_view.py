"""Split views: a cache that shares another cache's feature sets under a different split column.

The feature sets are symbolic links (nothing is copied or re-extracted), so cross-validation
folds, or scoring a corpus's dev split as `test` while early stopping on a part carved from
train, need no re-extraction and no change to the trainer. A run trained on a view records
the view's path and provenance identical to the source's.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Iterable

import numpy as np

from fuse.data.spec import DataError

VIEW_MARKER = ".emofuse-split-view.json"


def split_view(source: str | Path, dest: str | Path, splits: Iterable[str]) -> Path:
    """Write a cache at `dest` whose table is `source`'s with split column `splits`.

    Its feature sets are symbolic links to `source`'s (nothing is copied or re-extracted), so
    a run trained on the view records the view's path and provenance identical to the
    source's. `dest` is replaced if it is a view this function wrote; any other existing
    folder is refused. Used for cross-validation folds and for scoring a dev split as test.
    """
    from cache_schema import UtteranceTable, create_cache, open_cache

    source, dest = Path(source).resolve(), Path(dest)
    cache = open_cache(source)
    table = cache.table
    splits = np.asarray(list(splits), dtype=object)
    if len(splits) != len(table):
        raise DataError(f"split_view: {len(splits)} split values for {len(table)} utterances of {source}")
    if any(not isinstance(s, str) for s in splits):
        raise DataError("split_view: split values must be strings (train, dev, test, or '' to leave a row out)")
    if dest.exists():
        if not (dest / VIEW_MARKER).is_file():
            raise DataError(f"{dest}: exists and is not a split view written by fuse.data.split_view; refusing to replace it")
        shutil.rmtree(dest)
    columns = dict(table.columns)
    columns["split"] = splits
    create_cache(dest, UtteranceTable(columns, list(table.label_names), list(table.labels_multi_names)))
    features = dest / "features"
    features.mkdir(exist_ok=True)
    for name in cache.feature_names():
        os.symlink(os.path.realpath(source / "features" / name), features / name, target_is_directory=True)
    values, counts = np.unique(splits, return_counts=True)
    (dest / VIEW_MARKER).write_text(json.dumps({"source": str(source), "splits": {str(v): int(c) for v, c in zip(values, counts)}}, indent=1))
    return dest
