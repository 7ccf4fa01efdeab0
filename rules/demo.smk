# The synthetic demo corpus (extract.demo): MELD-layout CSVs + MP4 clips with text, speech-like
# audio and a face, so the default config runs offline end to end. Only when `demo:` is set.
import os

from extract.config import demo_corpus_files

if CFG.get("demo"):

    checkpoint demo_corpus:  # a checkpoint: the table's media inputs are listed once it has run
        output:
            demo_corpus_files(CFG),
        params:
            out_dir=lambda wildcards, output: os.path.dirname(output[0]),
            dialogues=CFG["demo"]["dialogues"],
            seed=CFG["demo"]["seed"],
        log:
            f"{WORK}/logs/demo_corpus.log",
        conda:
            "../envs/extract.yaml"
        shell:
            "python -m extract.demo {params.out_dir:q} --dialogues {params.dialogues} --seed {params.seed} > {log:q} 2>&1"
