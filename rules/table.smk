# Corpus -> utterance table in the cache + shard files.
#
# A checkpoint: how many part jobs exist is known only once the table is built. The shard
# files (WORK/shards/shard-NNNNN.json) are side outputs, rewritten only when their content
# changes, so after adding utterances only new or changed shards have a newer mtime than
# their parts and Snakemake reruns exactly those part jobs. index.json (the declared output)
# lists the shards; merges depend on it and are re-evaluated when the checkpoint reruns.
from extract.config import canonical_json, corpus_input_files


checkpoint table:
    input:
        demo_corpus_files(CFG) or corpus_input_files(CFG["corpus"]),
    output:
        index=INDEX,
    params:
        corpus=canonical_json(CFG["corpus"]),
        cache=CACHE,
        work=lambda wildcards, output: work_dir_of(output.index),
        shard_size=CFG["shard_size"],
    log:
        f"{WORK}/logs/table.log",
    benchmark:
        f"{WORK}/benchmarks/table.tsv"
    conda:
        "../envs/extract.yaml"
    shell:
        "python -m extract.run table --corpus {params.corpus:q} --cache {params.cache:q} --work-dir {params.work:q}"
        " --shard-size {params.shard_size} --index {output.index:q} --log {log:q}"
