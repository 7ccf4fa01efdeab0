# Names and helpers shared by the rule files (the Snakefile defines CFG, WORK, CACHE, INDEX).
import json
import re
from pathlib import Path

from extract.config import feature_specs

FEATURES = feature_specs(CFG)
GPU_FEATURES = [name for name, spec in FEATURES.items() if spec.uses_gpu]
CPU_FEATURES = [name for name, spec in FEATURES.items() if not spec.uses_gpu]


def one_of(names):
    """A wildcard regex matching exactly these names ((?!) matches nothing)."""
    return "|".join(re.escape(name) for name in names) or "(?!)"


def parts_of(wildcards):
    """Every shard's part of this feature set, from the table checkpoint's index."""
    index = json.loads(Path(checkpoints.table.get().output.index).read_text())
    return [f"{WORK}/parts/{wildcards.feature}/shard-{entry['name']}.zarr" for entry in index["shards"]]


def work_dir_of(index_file):
    """WORK from WORK/shards/index.json (so jobs get it from their files, not a constant)."""
    return str(Path(index_file).parent.parent)
