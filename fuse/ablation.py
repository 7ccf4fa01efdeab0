"""Modality ablation: does fusion beat each modality alone on this cache?

    fuse ablate --cache data/feats.zarr [--model cmaf] [--seeds 0,1,2] [--out runs/ablation]

The model is trained on every modality `fuse train` would pick from the cache ("fused") and on
each of those modalities alone, with the same seeds and options, as one `fuse sweep` (the cache
is opened once, finished runs are skipped, an interrupted ablation resumes). The report gives
mean ± sample std over seeds of the task's headline metrics per arm and split, and whether the
fused model beats every single modality in the runs' early-stopping metric (weighted F1 for
single-label, micro F1 for multi-label tasks) on the comparison split (test when the cache has
labelled test utterances, else dev), comparing means over the same seeds: this is the
unimodal-vs-multimodal table fusion papers report, computed the same way for every arm.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from fuse import metrics as M
from fuse.batch import MODALITIES
from fuse.data import select_feature_sets

FUSED = "fused"
RESULT_FILE, TABLE_FILE = "ablation.json", "ablation.md"


class AblationError(ValueError):
    """Bad ablation request (cache, feature sets, seeds); nothing was trained."""


@dataclass
class AblationResult:
    out: Path
    task: str
    metric: str  # the comparison metric: the runs' early-stopping metric (weighted F1 / micro F1)
    split: str  # the comparison split
    feature_sets: dict[str, str]  # modality -> feature set of the fused arm
    seeds: list[int]
    arms: dict[str, dict[str, Any]] = field(default_factory=dict)  # arm -> {run names, per split: metric -> values}

    def mean(self, arm: str, split: str | None = None, metric: str | None = None) -> float:
        return float(np.mean(self.arms[arm]["splits"][split or self.split][metric or self.metric]))

    @property
    def fusion_margin(self) -> float:
        """Fused mean minus the best single modality's mean on the comparison split."""
        return self.mean(FUSED) - max(self.mean(m) for m in self.feature_sets)

    @property
    def fusion_beats_every_modality(self) -> bool:
        return self.fusion_margin > 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "metric": self.metric,
            "comparison_split": self.split,
            "feature_sets": self.feature_sets,
            "seeds": self.seeds,
            "arms": self.arms,
            "means": {arm: {s: {m: float(np.mean(v)) for m, v in per.items()} for s, per in a["splits"].items()} for arm, a in self.arms.items()},
            "fusion_margin": self.fusion_margin,
            "fusion_beats_every_modality": self.fusion_beats_every_modality,
        }

    def table(self) -> str:
        """Markdown: one row per arm, mean ± std of each headline metric on the comparison split."""
        names = M.headline(self.task)
        lines = [
            f"{len(self.seeds)} seed(s) {self.seeds}, {self.split} split, mean ± std",
            "",
            "| arm | " + " | ".join(names) + " |",
            "|---|" + "---|" * len(names),
        ]
        for arm, record in self.arms.items():
            values = record["splits"][self.split]
            label = f"{arm} ({', '.join(self.feature_sets.values())})" if arm == FUSED else f"{arm} only ({self.feature_sets[arm]})"
            lines.append(f"| {label} | " + " | ".join(_mean_std(values[n]) for n in names) + " |")
        verdict = "beats" if self.fusion_beats_every_modality else "does NOT beat"
        lines += ["", f"fused {verdict} every single modality on {self.split} {self.metric} (margin {self.fusion_margin:+.4f} over the best one)"]
        return "\n".join(lines)


def _mean_std(values: list[float]) -> str:
    array = np.asarray(values, dtype=np.float64)
    std = float(array.std(ddof=1)) if len(array) > 1 else 0.0
    return f"{array.mean():.4f} ± {std:.4f}"


def plan_arms(cache, requested: dict[str, str | None], base: dict[str, Any], seeds: list[int]) -> tuple[dict[str, str], list[dict[str, Any]]]:
    """The fused feature sets and one sweep entry per (arm, seed)."""
    from fuse.data import DataError

    try:
        chosen = select_feature_sets(cache, requested)
    except DataError as exc:
        raise AblationError(str(exc)) from None
    if len(chosen) < 2:
        raise AblationError(f"{cache.path}: an ablation needs at least two modalities; the selection has only {', '.join(chosen)}")
    arms = {FUSED: dict(chosen), **{m: {m: chosen[m]} for m in chosen}}
    entries = []
    for arm, sets in arms.items():
        selection = {m: sets.get(m, "none") for m in MODALITIES}
        entries += [{**base, **selection, "seed": seed, "_arm": arm} for seed in seeds]
    return chosen, entries


def run_ablation(
    cache_path: str | Path,
    out: str | Path,
    *,
    model: str = "cmaf",
    seeds: list[int] = (0, 1, 2),
    requested: dict[str, str | None] | None = None,
    options: dict[str, Any] | None = None,
    jobs: int = 1,
    echo: Callable[[str], None] = print,
) -> AblationResult:
    """Train the fused model and every single-modality arm (see the module docstring)."""
    from cache_schema import CacheError, open_cache
    from fuse.sweep import SweepError, expand, run_sweep

    seeds = [int(s) for s in seeds]
    if not seeds or len(set(seeds)) != len(seeds):
        raise AblationError(f"seeds must be distinct and at least one, got {seeds}")
    try:
        cache = open_cache(cache_path)
    except CacheError as exc:
        raise AblationError(str(exc)) from None
    base = {"model": model, **(options or {})}
    chosen, entries = plan_arms(cache, requested or {}, base, seeds)
    arms_of = [e.pop("_arm") for e in entries]
    try:
        plan = expand({"runs": entries}, source="ablation")
    except SweepError as exc:
        raise AblationError(str(exc)) from None
    out = Path(out)
    result = run_sweep(plan, cache_path, out, jobs=jobs, echo=echo)
    if result.failed:
        raise AblationError(f"{len(result.failed)} run(s) failed: {', '.join(result.failed)} (see their train.log under {out})")

    first = json.loads((out / plan.runs[0].name / "metrics.json").read_text())
    task = first["task"]
    split = "test" if first["splits"].get("test") else "dev"
    names = M.headline(task)
    ablation = AblationResult(out, task, first["metric"], split, chosen, seeds)
    for arm, run in zip(arms_of, plan.runs):
        metrics = json.loads((out / run.name / "metrics.json").read_text())["splits"]
        record = ablation.arms.setdefault(arm, {"runs": [], "splits": {}})
        record["runs"].append(run.name)
        for s, values in metrics.items():
            if values:
                per = record["splits"].setdefault(s, {n: [] for n in names})
                for n in names:
                    per[n].append(float(values[n]))
    (out / RESULT_FILE).write_text(json.dumps(ablation.to_dict(), indent=1) + "\n")
    (out / TABLE_FILE).write_text(ablation.table() + "\n")
    return ablation
