# One job per (feature set, group of `shards_per_job` consecutive shards): the encoder is loaded
# once per job and writes one part per shard (extract.run parts). Start-up and model load cost
# ~10-13 s per job on a loaded 2-core machine, more than a 500-utterance text shard takes to
# encode, so one job per shard spent most of its time starting (docs/workflow.md, job grouping).
#
# Two rules with the same body: `part_gpu` for neural encoders that may use a GPU (device
# auto/cuda; declares resources gpu=1) and `part` for the rest (opensmile, GloVe, csd, or
# device cpu). Separate names let a profile send them to different places, e.g.
# `set-resources: {part_gpu: {slurm_partition: gpu}}`, and locally `--resources gpu=1`
# keeps GPU jobs from sharing one device.
#
# The job's output is its report (WORK/parts/<feature>/job-NNNNN.json, named after its first
# shard); the parts (WORK/parts/<feature>/shard-NNNNN.zarr) appear atomically beside it, one
# by one, as the job goes. A job that reruns (one of its shards changed, or it was killed)
# keeps every part that is current (same shard file, media and feature config) and extracts
# only the rest, so finished work is never redone and no --rerun-incomplete is needed.
#
# params.feature (name, encoder, dtype) is what the values depend on: changing it reruns the
# feature set (Snakemake's params trigger). params.runtime (device, batch budget, threads,
# workers, strict) only changes speed; it is a RuntimeArgs object, which the params trigger
# does not track, so tuning it keeps finished parts.


# Audio/video parts also read shards/media-NNNNN.json (size + mtime of the shard's media,
# rewritten by the table only when it changes): a replaced clip reruns its shard's job, which
# re-extracts exactly that shard.
def media_input(wildcards):
    if FEATURES[wildcards.feature].modality in ("audio", "video") and FEATURES[wildcards.feature].kind != "csd":
        return [f"{WORK}/shards/media-{shard}.json" for shard in shard_groups()[wildcards.group]]
    return []


wildcard_constraints:
    feature=one_of(FEATURES),
    group=r"\d{5}",


for _rule_name, _names, _gpus in (("part", CPU_FEATURES, 0), ("part_gpu", GPU_FEATURES, 1)):

    rule:
        name:
            _rule_name
        input:
            shards=group_shard_files,
            media=media_input,
        output:
            report=f"{WORK}/parts/{{feature}}/job-{{group}}.json",
        wildcard_constraints:
            feature=one_of(_names),
        params:
            feature=lambda wildcards: FEATURES[wildcards.feature].value_json(),
            runtime=lambda wildcards: FEATURES[wildcards.feature].runtime(),
            parts_dir=lambda wildcards: f"{WORK}/parts/{wildcards.feature}",
        threads: lambda wildcards: FEATURES[wildcards.feature].threads
        resources:
            gpu=_gpus,
        log:
            f"{WORK}/logs/part/{{feature}}/job-{{group}}.log",
        benchmark:
            f"{WORK}/benchmarks/part/{{feature}}/job-{{group}}.tsv"
        conda:
            "../envs/extract.yaml"
        shell:
            "python -m extract.run parts --feature {params.feature:q} {params.runtime}"
            " --shards {input.shards:q} --parts-dir {params.parts_dir:q} --report {output.report:q} --log {log:q}"
