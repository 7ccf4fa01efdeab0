# One job per (feature set, shard): encoder over the shard's utterances -> a part.
#
# Two rules with the same body: `part_gpu` for neural encoders that may use a GPU (device
# auto/cuda; declares resources gpu=1) and `part` for the rest (opensmile, GloVe, csd, or
# device cpu). Separate names let a profile send them to different places, e.g.
# `set-resources: {part_gpu: {slurm_partition: gpu}}`, and locally `--resources gpu=1`
# keeps GPU jobs from sharing one device.
#
# Parts live under WORK/parts/<feature>/ and appear atomically (FeaturePartWriter writes
# beside the final path and renames), so a killed job leaves no output and the next run
# simply runs it again: no --rerun-incomplete needed.
#
# params.feature (name, encoder, dtype) is what the values depend on: changing it reruns the
# feature set (Snakemake's params trigger). params.runtime (device, batch budget, threads,
# workers, strict) only changes speed; it is a RuntimeArgs object, which the params trigger
# does not track, so tuning it keeps finished parts.


# Audio/video parts also read shards/media-NNNNN.json (size + mtime of the shard's media,
# rewritten by the table only when it changes): a replaced clip reruns exactly its shard.
def media_input(wildcards):
    if FEATURES[wildcards.feature].modality in ("audio", "video") and FEATURES[wildcards.feature].kind != "csd":
        return [f"{WORK}/shards/media-{wildcards.shard}.json"]
    return []


wildcard_constraints:
    feature=one_of(FEATURES),
    shard=r"\d{5}",


for _rule_name, _names, _gpus in (("part", CPU_FEATURES, 0), ("part_gpu", GPU_FEATURES, 1)):

    rule:
        name:
            _rule_name
        input:
            shard=f"{WORK}/shards/shard-{{shard}}.json",
            media=media_input,
        output:
            part=directory(f"{WORK}/parts/{{feature}}/shard-{{shard}}.zarr"),
        wildcard_constraints:
            feature=one_of(_names),
        params:
            feature=lambda wildcards: FEATURES[wildcards.feature].value_json(),
            runtime=lambda wildcards: FEATURES[wildcards.feature].runtime(),
        threads: lambda wildcards: FEATURES[wildcards.feature].threads
        resources:
            gpu=_gpus,
        log:
            f"{WORK}/logs/part/{{feature}}/shard-{{shard}}.log",
        benchmark:
            f"{WORK}/benchmarks/part/{{feature}}/shard-{{shard}}.tsv"
        conda:
            "../envs/extract.yaml"
        shell:
            "python -m extract.run part --feature {params.feature:q} {params.runtime}"
            " --shard {input.shard:q} --out {output.part:q} --log {log:q}"
