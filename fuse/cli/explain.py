"""`fuse explain`: plot a cross-modal attention map of one utterance.

The run's best model is applied to the utterance (features read, truncated and normalised
exactly as in training); the chosen attention map ("<query>_to_<key>", default
text_to_audio) is averaged over heads and drawn as query positions x key positions.

Axis labels: text positions are the utterance's tokens when the text feature set's
`checkpoint` attribute is a local tokenizer folder whose tokenisation of the utterance has
exactly as many tokens as the stored features, else its whitespace words when their count
matches, else token numbers. Positions of other modalities are labelled with their time
in seconds when the feature set has a numeric `frame_rate`, else with frame numbers.
Nothing is ever downloaded.
"""
from __future__ import annotations

import re
from pathlib import Path

import click
import numpy as np

from fuse.cli.train import fail


def position_labels(fs, length: int, text: str) -> list[str]:
    """Tick labels for `length` positions of feature set `fs` (see the module docstring)."""
    modality = fs.attrs.get("modality") or fs.name.split(".", 1)[0]
    if modality == "text":
        tokens = _tokenizer_tokens(fs.attrs.get("checkpoint"), text)
        if tokens is not None and len(tokens) == length:
            return tokens
        words = text.split()
        if len(words) == length:
            return words
        return [f"tok {i}" for i in range(length)]
    rate = fs.attrs.get("frame_rate")
    if isinstance(rate, (int, float)) and rate > 0:
        return [f"{i / rate:.2f}s" for i in range(length)]
    return [f"frame {i}" for i in range(length)]


def _tokenizer_tokens(checkpoint, text: str) -> list[str] | None:
    if not checkpoint or not Path(str(checkpoint)).is_dir():
        return None
    try:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(checkpoint), local_files_only=True)
        return tokenizer.convert_ids_to_tokens(tokenizer(text)["input_ids"])
    except Exception:  # no usable tokenizer there: fall back to words / numbers (documented)
        return None


@click.command("explain")
@click.option("--run", "run_dir", required=True, type=click.Path(file_okay=False), help="Run folder written by fuse train.")
@click.option("--cache", type=click.Path(), help="Cache holding the utterance [the run's cache].")
@click.option("--utterance", "utterance_id", required=True, help="Utterance id (the table's `id` column).")
@click.option("--attention", "attention_name", help="Attention map to draw [text_to_audio when the model has it].")
@click.option("--out", type=click.Path(dir_okay=False), help="PNG to write [<run>/attention_<id>_<map>.png].")
@click.option("--device", default="cpu", show_default=True)
def explain(run_dir, cache, utterance_id, attention_name, out, device) -> None:
    """Plot the cross-modal attention map of one utterance (e.g. text tokens vs audio frames)."""
    import torch

    from cache_schema import CacheError
    from fuse import plots, runs
    from fuse.data import DataError

    try:
        loaded = runs.load_run(run_dir, cache, device=device)
        data = loaded.data
        row = int(data.rows_of_ids([utterance_id])[0])
        batch = data.batch_for_rows(np.array([row]), with_labels=False).to(loaded.device)
    except (runs.RunError, DataError, CacheError) as exc:
        fail(str(exc))
    with torch.no_grad():
        output = loaded.model(batch)
    maps = {k: v for k, v in output.attentions.items() if re.fullmatch(r"[a-z]+_to_[a-z]+", k) and v.ndim == 4}
    name = loaded.checkpoint["model_name"]
    if not maps:
        fail(f"model {name!r} records no cross-modal attention maps (it reports: {', '.join(output.attentions) or 'none'})")
    if attention_name is None:
        attention_name = "text_to_audio" if "text_to_audio" in maps else sorted(maps)[0]
    if attention_name not in maps:
        fail(f"no attention map {attention_name!r}; this model has {', '.join(sorted(maps))}")
    query, key = attention_name.split("_to_")
    weights = maps[attention_name][0].float().mean(dim=0).cpu().numpy()  # (T_query, T_key), mean over heads
    q_len = int(batch.modalities[query].mask[0].sum())
    k_len = int(batch.modalities[key].mask[0].sum())
    if q_len == 0 or k_len == 0:
        missing = query if q_len == 0 else key
        fail(f"utterance {utterance_id!r} has no {missing} features, so {attention_name} is empty")
    weights = weights[:q_len, :k_len]
    text = str(data.cache.column("text")[row])
    q_labels = position_labels(data.feature_sets[query], q_len, text)
    k_labels = position_labels(data.feature_sets[key], k_len, text)
    safe_id = re.sub(r"[^A-Za-z0-9_.-]", "_", utterance_id)
    target = Path(out) if out else Path(run_dir) / f"attention_{safe_id}_{attention_name}.png"
    plots.attention_map(
        weights, q_labels, k_labels, target,
        title=f"{utterance_id}: {attention_name} ({name})", query_name=f"{query} positions", key_name=f"{key} positions",
    )
    click.echo(f"wrote {target} ({attention_name}: {q_len} x {k_len})")
