"""CLI: `python -m extract.demo OUT_DIR [--dialogues 48] [--seed 0] [--workers 1]`."""
from __future__ import annotations

import argparse

from .corpus import generate_demo


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m extract.demo", description="Write the synthetic MELD-layout demo corpus.")
    parser.add_argument("out_dir", help="output folder (created; an earlier demo corpus there is replaced)")
    parser.add_argument("--dialogues", type=int, default=48, help="number of dialogues (>= 3; default 48)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--workers", type=int, default=1, help="processes rendering clips (default 1; output is identical for any number)")
    args = parser.parse_args(argv)
    try:
        summary = generate_demo(args.out_dir, n_dialogues=args.dialogues, seed=args.seed, workers=args.workers)
    except (ValueError, FileExistsError, NotADirectoryError) as err:
        parser.exit(2, f"python -m extract.demo: error: {err}\n")
    counts = summary["utterances"]
    print(
        f"demo corpus: {counts['train']} train / {counts['dev']} dev / {counts['test']} test utterances "
        f"({summary['n_dialogues']} dialogues, seed {summary['seed']}) -> {summary['out_dir']} in {summary['seconds']:.1f} s"
    )


if __name__ == "__main__":
    main()
