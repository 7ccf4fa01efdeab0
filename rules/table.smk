# Corpus -> utterance table in the cache + shard files.
#
# A checkpoint: how many part jobs exist is known only once the table is built. The shard
# files (WORK/shards/shard-NNNNN.json) are side outputs, rewritten only when their content
# changes, so after adding utterances only new or changed shards have a newer mtime than
# their parts and Snakemake reruns exactly those part jobs. index.json (the declared output)
# lists the shards; merges depend on it and are re-evaluated when the checkpoint reruns.
#
# Media identity (extract/provenance.py): the inputs also list every media file of the corpus
# and their folders, so a clip rewritten, replaced or added makes this checkpoint rerun; it
# rewrites shards/media-NNNNN.json (size + mtime of each row's media) only for shards whose
# media changed, and those files are inputs of the audio/video part jobs: exactly the shards
# with a changed clip re-extract. With the demo, its checkpoint is evaluated first so the media
# list is the same on every run (a changed input set would rerun this job once).
from extract.config import canonical_json, corpus_input_files
from extract.provenance import corpus_media_inputs


def table_inputs(wildcards):
    if CFG.get("demo"):
        checkpoints.demo_corpus.get()
        return demo_corpus_files(CFG) + corpus_media_inputs(CFG["corpus"])
    return corpus_input_files(CFG["corpus"]) + corpus_media_inputs(CFG["corpus"])


checkpoint table:
    input:
        table_inputs,
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
