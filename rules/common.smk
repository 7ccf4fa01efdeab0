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


def shard_groups():
    """{first shard: [shards]}: runs of `shards_per_job` consecutive shards, from the table checkpoint's index."""
    index = json.loads(Path(checkpoints.table.get().output.index).read_text())
    names, size = [entry["name"] for entry in index["shards"]], CFG["shards_per_job"]
    return {names[i]: names[i : i + size] for i in range(0, len(names), size)}


def group_shard_files(wildcards):
    return [f"{WORK}/shards/shard-{shard}.json" for shard in shard_groups()[wildcards.group]]


def parts_of(wildcards):
    """The reports of every part job of this feature set (the parts themselves: WORK/parts/<feature>/shard-NNNNN.zarr)."""
    return [f"{WORK}/parts/{wildcards.feature}/job-{group}.json" for group in shard_groups()]


def work_dir_of(index_file):
    """WORK from WORK/shards/index.json (so jobs get it from their files, not a constant)."""
    return str(Path(index_file).parent.parent)
