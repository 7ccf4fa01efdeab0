"""`fuse ablate`: the fused model against each modality alone, same seeds (fuse/ablation.py).

    fuse ablate --cache data/feats.zarr [--model cmaf] [--seeds 0,1,2] [--out runs/ablation]

Exit status: 0 done (whatever the verdict), 2 bad request or a failed run, 130 interrupted
(run the same command again to resume).
"""
from __future__ import annotations

import click

from fuse.cli.common import fail



@click.command("ablate")
@click.option("--cache", required=True, type=click.Path(), help="Feature cache (Zarr).")
@click.option("--model", default="cmaf", show_default=True, help="Model trained in every arm.")
@click.option("--seeds", default="0,1,2", show_default=True, help="Comma-separated seeds, the same for every arm.")
@click.option("--out", default="runs/ablation", show_default=True, type=click.Path(file_okay=False), help="Folder: one run per arm and seed, ablation.json/.md.")
@click.option("--text", help="Text feature set [the cache's only one].")
@click.option("--audio", help="Audio feature set [the cache's only one].")
@click.option("--video", help="Video feature set [the cache's only one].")
@click.option("--epochs", type=click.IntRange(min=1), help="Maximum epochs [model default].")
@click.option("--normalisation", type=click.Choice(["auto", "global", "speaker", "none"]), help="Feature normalisation [auto, as fuse train].")
@click.option("--jobs", type=click.IntRange(min=1), default=1, show_default=True, help="Worker processes.")
def ablate(cache, model, seeds, out, text, audio, video, epochs, normalisation, jobs) -> None:
    """Train the fused model and each modality alone; report whether fusion helps."""
    from fuse.ablation import AblationError, run_ablation
    from fuse.sweep import SweepError, SweepInterrupted

    try:
        seed_list = [int(s) for s in seeds.split(",") if s.strip()]
    except ValueError:
        fail(f"--seeds {seeds!r}: expected comma-separated integers", 2)
    options = {k: v for k, v in (("epochs", epochs), ("normalisation", normalisation)) if v is not None}
    try:
        result = run_ablation(
            cache, out, model=model, seeds=seed_list, requested={"text": text, "audio": audio, "video": video},
            options=options, jobs=jobs, echo=click.echo,
        )
    except SweepInterrupted as exc:
        fail(str(exc), 130)
    except (AblationError, SweepError) as exc:
        fail(str(exc), 2)
    except KeyboardInterrupt:
        fail(f"interrupted; run the same command again to resume ({out})", 130)
    click.echo(result.table())
    click.echo(f"wrote {result.out / 'ablation.json'} and {result.out / 'ablation.md'}")
