# The sweep as a Snakemake workflow: one job per run, the leaderboard as the final rule.
#
# Written for `fuse sweep --executor snakemake`, which checks the grid against the cache,
# writes <out>/plan.json and <out>/snakemake_config.yaml, and runs
#
#     snakemake --snakefile fuse/sweep/sweep.smk --directory <out> \
#         --configfile <out>/snakemake_config.yaml --cores N [--profile profiles/slurm]
#
# Paths below are relative to the sweep folder (--directory). A run's output is its
# sweep_run.json, written when the run ends, finished or failed with its own error (the
# leaderboard lists failures, as the local sweep's does); a job killed mid-way leaves none, so
# Snakemake reruns it and the run resumes from its checkpoint. Finished runs are outputs:
# running the workflow again only runs what is missing (`fuse sweep` deletes failed runs'
# records first, so they are retried as the local sweep retries them).

import re

RUN_RECORD = config["run_record"]
JOB = f"{config['python']} -m fuse.sweep.snakemake"


localrules: sweep_leaderboard


rule sweep_all:
    input:
        "leaderboard.csv",
        "leaderboard.md",
    default_target: True


rule sweep_run:
    """Train (or resume) one run of the sweep."""
    output:
        f"{{run}}/{RUN_RECORD}",
    log:
        "logs/{run}.log",
    benchmark:
        "benchmarks/{run}.tsv"
    wildcard_constraints:
        run="|".join(map(re.escape, config["runs"])),
    threads: config["threads"]
    resources:
        mem_mb=config["resources"]["mem_mb"],
        runtime=config["resources"]["runtime"],
    shell:
        f"{JOB} run --out . --name {{wildcards.run:q}} --threads {{threads}} > {{log:q}} 2>&1"


rule sweep_leaderboard:
    """leaderboard.csv/.md (and the seed tables) from every run's results."""
    input:
        expand(f"{{run}}/{RUN_RECORD}", run=config["runs"]),
    output:
        "leaderboard.csv",
        "leaderboard.md",
    params:
        metric=f"--metric {config['metric']}" if config.get("metric") else "",
    shell:
        f"{JOB} leaderboard --out . {{params.metric}}"
