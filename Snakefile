"""emofuse stage 1: extract frozen-encoder features into the Zarr cache.

    snakemake extract --cores 8                                # config/config.yaml (offline demo)
    snakemake extract --cores 8 --configfile config/meld.yaml  # a preset REPLACES the default
    snakemake extract --profile profiles/slurm                 # on a SLURM cluster

Rule chain (docs/workflow.md has the details):
    demo_corpus (optional) -> table (checkpoint) -> part (feature set x shard) -> merge (per
    feature set) -> validate -> extract (target)

The config is validated (config/schema.yaml + encoder/corpus signatures) while this file is
parsed, so a bad key stops the run before any job starts, with a message naming the key.
"""
import os
import shlex
import sys
import time

sys.path.insert(0, workflow.basedir)  # `extract` importable even without `pip install -e .`

from extract.config import ConfigError, validate_config

# A --configfile given on the command line replaces this default instead of being deep-merged
# into it (Snakemake's behaviour), so a preset never inherits the demo corpus or its features.
# (Located beside this Snakefile, so `snakemake -s /path/to/Snakefile -d rundir` works too;
# relative paths inside a config are relative to the working directory.)
DEFAULT_CONFIG = os.path.join(workflow.basedir, "config", "config.yaml")
if not workflow.overwrite_configfiles:
    configfile: DEFAULT_CONFIG

_config_source = ", ".join(str(p) for p in workflow.overwrite_configfiles) or DEFAULT_CONFIG
try:
    CFG = validate_config(config, source=f"invalid extraction config ({_config_source})")
except ConfigError as error:
    sys.stderr.write(f"{error}\n")
    raise SystemExit(1)

WORK = CFG["work_dir"]
CACHE = CFG["cache"]
INDEX = f"{WORK}/shards/index.json"
VALIDATED = f"{WORK}/validated.json"
STARTED = time.time()

# Jobs run `python -m extract.run ...` from this checkout. Without --use-conda/apptainer that
# `python` must be the interpreter running Snakemake (e.g. .venv/bin/python even when the venv
# is not activated), so its bin directory goes first on PATH; inside a conda env it is the env's.
# (braces doubled twice: once for this f-string, once for Snakemake's formatting of commands)
_deployment = {method.name for method in workflow.deployment_settings.deployment_method}
_python_path = "" if _deployment & {"CONDA", "APPTAINER"} else f"export PATH={shlex.quote(os.path.dirname(sys.executable))}:$PATH; "
shell.prefix(
    f"set -euo pipefail; {_python_path}export PYTHONPATH={shlex.quote(workflow.basedir)}${{{{PYTHONPATH:+:$PYTHONPATH}}}}; "
)


include: "rules/common.smk"
include: "rules/demo.smk"
include: "rules/table.smk"
include: "rules/features.smk"
include: "rules/merge.smk"


localrules: extract


rule extract:
    """Target: a validated cache holding every configured feature set."""
    input:
        VALIDATED,
    default_target: True


onsuccess:
    # Utterances dropped from the corpus since the cache was built: said whenever the table ran.
    _removed = f"{WORK}/removed_utterances.json"
    if os.path.exists(_removed) and os.path.getmtime(_removed) >= STARTED:
        import json

        with open(_removed) as handle:
            _report = json.load(handle)
        if _report["n"]:
            print(f"\nNOTE {_report['message']} (list: {_removed})\n")
    # The summary, once, at the very end (only when this run rebuilt the report).
    if os.path.exists(VALIDATED) and os.path.getmtime(VALIDATED) >= STARTED:
        import json

        from extract.run import format_summary

        with open(VALIDATED) as handle:
            report = json.load(handle)
        summary = format_summary(report["features"], report["n_utterances"])
        print(f"\n{summary}\ncache: {report['cache']}\n")
