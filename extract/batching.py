"""Run a stage-1 encoder over many utterances: length-bucketed batches, DataLoader workers.

* :func:`bucket_batches` sorts utterances by an estimated length (longest first, so an
  out-of-memory batch shows up at once) and fills each batch until its padded cost
  ``batch size x longest length`` would exceed ``max_tokens`` or it holds ``max_batch`` items.
  An item longer than the budget gets a batch of its own. Never one utterance at a time
  unless the budget forces it. With ``window``, utterances are bucketed within consecutive
  windows of that many, so results come back roughly in input order and a part writer holds
  at most one window of features (cache_schema.FeaturePartWriter writes as rows complete).
* Encoders whose ``prepare`` is cheap and gives the exact length (``length_from_prepare``:
  the text encoders) are prepared once, up front, and bucketed by that length: text is
  tokenised once per utterance, not once for the hint and again in a worker.
* :func:`encode_utterances` feeds those batches through a ``torch.utils.data.DataLoader``
  whose workers run ``encoder.prepare`` (tokenising, decoding media), collates them as a plain
  list, and runs ``encoder.encode_batch`` in the main process. Every utterance comes back as
  one :class:`EncodeResult`, carrying either ``features`` or ``error``:
  - a failing ``prepare`` (bad media, empty text) marks that utterance only;
  - a failing ``encode_batch`` is retried one utterance at a time, so one bad item (or an
    out-of-memory batch) costs only itself. The encoders are built so that batched and
    one-at-a-time results are identical (padding removed with masks), hence the retry does
    not change any result.
  Results arrive in batch order, not input order; use ``result.index``.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .encoders.base import Encoder, PreparedItem, utterance_field

log = logging.getLogger(__name__)


def bucket_batches(lengths: Sequence[float], max_tokens: float, max_batch: int = 32, window: int | None = None) -> list[list[int]]:
    """Group indices of ``lengths`` into batches of similar length under a padded-cost budget.

    Each batch satisfies ``len(batch) <= max_batch`` and ``len(batch) * max(lengths[batch])
    <= max_tokens``, except a single item longer than ``max_tokens``, which is alone.
    Batches are returned longest first; every index appears exactly once. ``window``: bucket
    each run of ``window`` consecutive indices on its own (windows in order), so no batch
    mixes indices more than one window apart.
    """
    if max_tokens <= 0 or max_batch < 1:
        raise ValueError(f"need max_tokens > 0 and max_batch >= 1, got {max_tokens}, {max_batch}")
    lengths = np.asarray(lengths, dtype=np.float64)
    if lengths.ndim != 1 or (len(lengths) and (not np.isfinite(lengths).all() or (lengths < 0).any())):
        raise ValueError("lengths must be a 1-D sequence of finite numbers >= 0")
    if window is not None:
        if window < 1:
            raise ValueError(f"need window >= 1, got {window}")
        return [[start + i for i in batch]
                for start in range(0, len(lengths), window)
                for batch in bucket_batches(lengths[start : start + window], max_tokens, max_batch)]
    order = np.argsort(-lengths, kind="stable")
    batches: list[list[int]] = []
    current: list[int] = []
    longest = 0.0
    for index in order.tolist():
        length = float(lengths[index])
        if current and (len(current) >= max_batch or (len(current) + 1) * max(longest, length) > max_tokens):
            batches.append(current)
            current, longest = [], 0.0
        current.append(index)
        longest = max(longest, length)
    if current:
        batches.append(current)
    return batches


@dataclass
class EncodeResult:
    """One utterance's outcome: ``features`` (T, D) float32 and ``info``, or ``error``."""

    index: int
    utterance_id: str | None
    features: np.ndarray | None = None
    info: dict = field(default_factory=dict)
    error: BaseException | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def reason(self) -> str | None:
        """A one-line failure reason for the failures table, or None."""
        return None if self.error is None else f"{type(self.error).__name__}: {self.error}"


def _prepare(encoder: Encoder, utterance: Any) -> PreparedItem | BaseException:
    try:
        return encoder.prepare(utterance)
    except Exception as error:  # recorded per utterance; KeyboardInterrupt etc. still stop the run
        return error


class _PreparedUtterances:
    """Map-style dataset: i -> (i, utterance_id, PreparedItem or the exception prepare raised).

    ``prepared``: items already prepared (``length_from_prepare`` encoders), handed out as they are.
    """

    def __init__(self, encoder: Encoder, utterances: Sequence[Any], prepared: Sequence[Any] | None = None):
        self.encoder = encoder
        self.utterances = utterances
        self.prepared = prepared

    def __len__(self) -> int:
        return len(self.utterances)

    def __getitem__(self, index: int):
        utterance = self.utterances[index]
        utterance_id = utterance_field(utterance, "utterance_id")
        if self.prepared is not None:
            return index, utterance_id, self.prepared[index]
        return index, utterance_id, _prepare(self.encoder, utterance)


def _as_list(batch):
    return list(batch)


def _encode_isolating_failures(encoder: Encoder, prepared: list[tuple[int, str, PreparedItem]], timings: dict) -> Iterator[EncodeResult]:
    items = [item for _, _, item in prepared]
    try:
        started = time.perf_counter()
        try:
            outputs = encoder.encode_batch(items)
        finally:
            timings["forward_seconds"] = timings.get("forward_seconds", 0.0) + time.perf_counter() - started
        if len(outputs) != len(items):
            raise RuntimeError(f"{type(encoder).__name__}.encode_batch returned {len(outputs)} arrays for {len(items)} items")
    except Exception as batch_error:
        if len(items) == 1:
            index, utterance_id, item = prepared[0]
            yield EncodeResult(index, utterance_id, info=item.info, error=batch_error)
            return
        log.warning("batch of %d failed (%s); retrying its utterances one by one", len(items), batch_error)
        _free_accelerator_memory()
        for one in prepared:
            yield from _encode_isolating_failures(encoder, [one], timings)
        return
    for (index, utterance_id, item), features in zip(prepared, outputs):
        yield _checked(EncodeResult(index, utterance_id, features=features, info=item.info), encoder.dim)


def _checked(result: EncodeResult, dim: int) -> EncodeResult:
    """Features must be (T >= 1, dim) and finite; anything else becomes that utterance's error."""
    features = result.features
    problem = None
    if features.ndim != 2 or features.shape[1] != dim:
        problem = f"expected shape (T, {dim}), got {features.shape}"
    elif features.shape[0] == 0:
        problem = "encoder produced zero frames"
    elif not np.isfinite(features).all():
        problem = "encoder produced non-finite values"
    if problem is not None:
        result.features, result.error = None, ValueError(f"utterance {result.utterance_id!r}: {problem}")
    else:
        result.features = np.asarray(features, dtype=np.float32)
    return result


def _free_accelerator_memory() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def encode_utterances(
    encoder: Encoder,
    utterances: Sequence[Any],
    max_cost: float | None = None,
    max_batch: int | None = None,
    num_workers: int = 0,
    prefetch_factor: int = 2,
    progress: bool = True,
    lengths: Sequence[float] | None = None,
    on_batch: Callable[[list[EncodeResult]], None] | None = None,
    window_batches: int | None = 8,
    timings: dict | None = None,
) -> Iterator[EncodeResult]:
    """Encode ``utterances`` with ``encoder``; yield one EncodeResult per utterance.

    ``max_cost``/``max_batch``: the bucket budget in ``encoder.length_hint`` units (defaults:
    ``encoder.default_max_cost`` / ``default_max_batch``). ``lengths`` overrides the hints.
    ``num_workers``: DataLoader worker processes running ``prepare`` (0 = main process).
    ``progress``: a tqdm bar counting utterances (rate shown in utterances/s).
    ``on_batch``: optional callback with each batch's results (e.g. to write them).
    ``window_batches``: bucket within windows of ``window_batches x max_batch`` utterances
    (None: the whole input at once), which bounds how far ahead of input order results come.
    ``timings``: a dict that gets ``forward_seconds``, the time spent in ``encode_batch``.
    """
    import torch.utils.data
    from tqdm.auto import tqdm

    timings = {} if timings is None else timings

    upfront = None
    if lengths is None and encoder.length_from_prepare:
        upfront = [_prepare(encoder, utterance) for utterance in utterances]
        lengths = [1.0 if isinstance(item, BaseException) else encoder.prepared_length(item) for item in upfront]
        num_workers = 0  # nothing is left for workers to do
    elif lengths is None:
        lengths = [encoder.length_hint(utterance) for utterance in utterances]
    if len(lengths) != len(utterances):
        raise ValueError(f"{len(lengths)} lengths for {len(utterances)} utterances")
    if not len(utterances):
        return
    max_batch = max_batch or encoder.default_max_batch
    batches = bucket_batches(lengths, max_tokens=max_cost or encoder.default_max_cost, max_batch=max_batch,
                             window=None if window_batches is None else window_batches * max_batch)
    loader = torch.utils.data.DataLoader(
        _PreparedUtterances(encoder, utterances, upfront),
        batch_sampler=batches,
        collate_fn=_as_list,
        num_workers=num_workers,
        prefetch_factor=prefetch_factor if num_workers > 0 else None,
        persistent_workers=False,
    )
    bar = tqdm(total=len(utterances), unit="utt", desc=encoder.name, disable=not progress, smoothing=0.1)
    started = time.perf_counter()
    failures = 0
    try:
        for batch in loader:
            results = [EncodeResult(i, uid, error=item) for i, uid, item in batch if isinstance(item, BaseException)]
            prepared = [(i, uid, item) for i, uid, item in batch if not isinstance(item, BaseException)]
            if prepared:
                results.extend(_encode_isolating_failures(encoder, prepared, timings))
            failures += sum(not result.ok for result in results)
            if on_batch is not None:
                on_batch(results)
            yield from results
            bar.update(len(batch))
            bar.set_postfix(failed=failures, refresh=False)
    finally:
        bar.close()
    elapsed = time.perf_counter() - started
    log.info("%s: %d utterances in %.1f s (%.1f utt/s), %d failed", encoder.name, len(utterances), elapsed,
             len(utterances) / max(elapsed, 1e-9), failures)
