# Parts of one feature set -> features/<name> in the cache; then validate the whole cache.


rule merge:
    input:
        # ancient: the table rewrites the index on every run (e.g. after a media change); what a
        # merge depends on is its parts, which are rebuilt when their shard or media changed.
        index=ancient(INDEX),
        parts=parts_of,
    output:
        summary=f"{WORK}/merged/{{feature}}.json",
    params:
        feature=lambda wildcards: FEATURES[wildcards.feature].value_json(),
        cache=CACHE,
        work=lambda wildcards, input: work_dir_of(input.index),
        compression=CFG["compression"],
    log:
        f"{WORK}/logs/merge/{{feature}}.log",
    benchmark:
        f"{WORK}/benchmarks/merge/{{feature}}.tsv"
    conda:
        "../envs/extract.yaml"
    shell:
        "python -m extract.run merge --feature {params.feature:q} --cache {params.cache:q} --index {input.index:q}"
        " --work-dir {params.work:q} --compression {params.compression} --out {output.summary:q} --log {log:q}"


rule validate:
    input:
        merged=expand(f"{WORK}/merged/{{feature}}.json", feature=list(FEATURES)),
    output:
        report=VALIDATED,
    params:
        cache=CACHE,
        features=json.dumps(list(FEATURES)),
        deep="--deep" if CFG["validate_deep"] else "",
    log:
        f"{WORK}/logs/validate.log",
    conda:
        "../envs/extract.yaml"
    shell:
        "python -m extract.run validate --cache {params.cache:q} --features {params.features:q}"
        " --merged {input.merged:q} {params.deep} --out {output.report:q} --log {log:q} --quiet"
