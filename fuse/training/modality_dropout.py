"""Modality dropout: during training, hide each modality of each utterance with probability p.

A hidden modality takes the path real missing data takes (`ModalityInput.hidden`: values 0,
mask False, `present` False), so a model learns to predict from whatever subset it is given
and `fuse robustness` measures what that buys. Rules:

* Only modalities the utterance really has are candidates, and at least one of them is always
  kept: when every draw says "drop", the modality with the largest draw stays.
* The draws are one (rows x modalities) uniform table per epoch from `default_rng([seed,
  epoch, SALT])`, indexed by cache row, so an utterance's fate depends only on (seed, epoch,
  row): not on batch order, prefetching or resuming, and it leaves the batch-order RNG alone.
* With dialogue context, the utterance's own turn (the last column of `Batch.context[m]`) is
  hidden too; the neighbouring turns stay as they are (their own utterances drop them when
  they are the ones trained on).

p = 0 (the default) leaves batches untouched, so runs without the option are unchanged.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import torch

from fuse.batch import Batch

SALT = 0x6D6F64  # keeps these draws apart from the batch-order RNG of the same (seed, epoch)


class ModalityDropout:
    def __init__(self, p: float, seed: int, n_rows: int, modalities: tuple[str, ...]):
        self.p, self.seed, self.n_rows, self.modalities = float(p), int(seed), int(n_rows), tuple(modalities)
        self._epoch, self._draws = None, None

    def draws(self, epoch: int) -> np.ndarray:
        """(n_rows, n_modalities) uniform draws of one epoch."""
        if self._epoch != epoch:
            self._epoch = epoch
            self._draws = np.random.default_rng([self.seed, int(epoch), SALT]).random((self.n_rows, len(self.modalities)))
        return self._draws

    def hidden_rows(self, batch: Batch, epoch: int) -> torch.Tensor:
        """(B, M) bool: which modality of which utterance of `batch` to hide."""
        from fuse.models.base import stack_present

        draws = torch.from_numpy(self.draws(epoch)[batch.index.cpu().numpy()])
        present = stack_present(batch.modalities, self.modalities).cpu()
        hide = (draws < self.p) & present
        everything = hide.sum(dim=1) == present.sum(dim=1)  # would hide every modality it has
        keep = torch.where(present, draws, torch.full_like(draws, -1.0)).argmax(dim=1)
        hide[everything, keep[everything]] = False
        return hide

    def __call__(self, batch: Batch, epoch: int) -> Batch:
        if self.p <= 0:
            return batch
        hide = self.hidden_rows(batch, epoch)
        modalities = dict(batch.modalities)
        context = dict(batch.context) if batch.context is not None else None
        for k, m in enumerate(self.modalities):
            rows = hide[:, k]
            if not rows.any():
                continue
            modalities[m] = modalities[m].hidden(rows)
            if context is not None and m in context:
                context[m] = context[m].hidden(rows, turns=slice(-1, None))  # the utterance's own turn
        return dataclasses.replace(batch, modalities=modalities, context=context)
