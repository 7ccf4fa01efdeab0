"""The extraction config: loading, validation, feature-set specs and shard planning.

The workflow (Snakefile) and the job entry points (extract/run.py) both go through this
module, so a config means the same thing at parse time and inside a job.

Choices:

* Validation is JSON Schema (config/schema.yaml) with the schema's `default`s filled in, plus
  two checks a schema cannot make without duplicating code: corpus options against the
  corpus adapter's signature and encoder options against the encoder class's constructor.
  Every problem is reported at once, each naming its key (`features[1].encoder.layers`).
* A feature set's config is split in two. The *value* part (name, encoder, dtype) decides
  what is stored, so changing it must re-extract; Snakemake sees it as a rule `params` and
  reruns. The *runtime* part (device, batch budget, threads, workers, strict) decides how fast
  and where, and is passed wrapped in :class:`RuntimeArgs`, an object Snakemake's params
  trigger does not track, so tuning a batch size does not throw away finished parts.
  (CPU and GPU results differ at float tolerance; the device each part ran on is recorded.)
* Shards are fixed-size row ranges of the cache's utterance table. The cache only ever
  appends utterances (cache_schema.create_cache), so adding utterances leaves every full
  shard's content unchanged and its shard file untouched (see `write_if_changed`).
"""
from __future__ import annotations

import copy
import hashlib
import inspect
import json
import math
import os
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
SCHEMA_PATH = REPO_ROOT / "config" / "schema.yaml"

# Encoder kinds are extract.encoders.ENCODER_KINDS (hf-text, hf-audio, hf-video, opensmile,
# glove, face-expression, image-cnn, vader) plus "csd": a CMU-MOSEI computational sequence cut per segment, no model.
CSD_KIND = "csd"
KNOWN_ENCODER_KINDS = ("hf-text", "hf-audio", "hf-video", "opensmile", "glove", "face-expression", "image-cnn", "vader", CSD_KIND)
# Encoders with a model that can run on a GPU (they take a `device` argument).
NEURAL_KINDS = ("hf-text", "hf-audio", "hf-video", "face-expression", "image-cnn")
# CMU-MOSEI computational sequences read as feature sets: modality name -> cache modality.
CSD_MODALITIES = {"covarep": "audio", "facet": "video", "glove": "text"}
# Arguments the workflow sets itself; a config may not pass them as encoder options.
WORKFLOW_SET_ARGS = ("name", "device")

# Corpus kinds whose start/end columns are offsets into the media file (MELD's are episode
# times of a per-utterance clip; EmoDB files are whole utterances; MOSEI has no media).
MEDIA_TIMES_ARE_OFFSETS = {"manifest": True, "meld": False, "audio_folder": False, "mosei_csd": False}


class ConfigError(ValueError):
    """The config is invalid; the message lists every problem, each naming its key."""

    def __init__(self, problems: list[str], source: str = "config"):
        self.problems = list(problems)
        super().__init__(f"{source}: {len(problems)} problem(s):\n" + "\n".join(f"  - {p}" for p in problems))


# ------------------------------------------------------------------------------ validation


def _schema() -> dict:
    with open(SCHEMA_PATH, encoding="utf-8") as handle:
        return yaml.safe_load(handle)


def _validator_with_defaults(schema: dict):
    """Draft 2020-12 validator that also fills `default` values (the jsonschema FAQ recipe)."""
    from jsonschema import Draft202012Validator, validators

    validate_properties = Draft202012Validator.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, subschema in properties.items():
                if isinstance(subschema, dict) and "default" in subschema and name not in instance:
                    instance[name] = copy.deepcopy(subschema["default"])
        yield from validate_properties(validator, properties, instance, schema)

    cls = validators.extend(Draft202012Validator, {"properties": set_defaults})
    return cls(schema)


def key_path(path: Iterable[Any]) -> str:
    """("features", 0, "encoder", "layers") -> "features[0].encoder.layers"."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _describe(error) -> list[str]:
    """One line per schema error, naming the offending key."""
    where = key_path(error.absolute_path)
    if error.validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        extra = sorted(set(error.instance) - set(allowed))
        prefix = "" if where == "(top level)" else where + "."
        return [f"config key '{prefix}{key}': unknown key (allowed here: {', '.join(allowed)})" for key in extra]
    if error.validator == "required":
        missing = [k for k in error.validator_value if k not in error.instance]
        prefix = "" if where == "(top level)" else where + "."
        return [f"config key '{prefix}{key}': required but missing" for key in missing]
    if error.validator in ("oneOf", "anyOf") and error.context:
        reasons = sorted({sub.message for sub in error.context})
        return [f"config key '{where}': {error.instance!r} is not valid ({'; or '.join(reasons)})"]
    return [f"config key '{where}': {error.message}"]


def validate_config(config: Mapping[str, Any], source: str = "config") -> dict:
    """A validated deep copy of `config` with defaults filled; raises ConfigError.

    Checks the schema, corpus options against the adapter, encoder options against the
    encoder constructor, unique feature-set names and cross-key rules.
    """
    config = copy.deepcopy(dict(config))
    validator = _validator_with_defaults(_schema())
    problems: list[str] = []
    for error in sorted(validator.iter_errors(config), key=lambda e: (list(map(str, e.absolute_path)), e.message)):
        problems.extend(_describe(error))
    schema_ok = not problems
    # The checks below look inside parts the schema may have rejected; each runs only where
    # its part is well-formed, so one report still lists every problem found.
    corpus = config.get("corpus")
    if isinstance(corpus, dict) and corpus.get("kind") in MEDIA_TIMES_ARE_OFFSETS:
        problems.extend(check_corpus_options(corpus))
    features = config.get("features") if isinstance(config.get("features"), list) else []
    names: dict[str, int] = {}
    for i, feature in enumerate(features):
        if not isinstance(feature, dict):
            continue
        where = f"features[{i}]"
        name = feature.get("name")
        if isinstance(name, str):
            if name in names:
                problems.append(f"config key '{where}.name': {name!r} is also the name of features[{names[name]}]")
            names.setdefault(name, i)
        encoder = feature.get("encoder")
        if not isinstance(encoder, dict) or encoder.get("kind") not in KNOWN_ENCODER_KINDS:
            continue
        if schema_ok:  # otherwise the schema has already named any unknown option
            problems.extend(check_encoder_options(encoder, f"{where}.encoder"))
        corpus_kind = corpus.get("kind") if isinstance(corpus, dict) else None
        if isinstance(corpus, dict) and corpus.get("media") is False and encoder["kind"] != CSD_KIND:
            reads = encoder_class(encoder["kind"]).modality
            if reads in ("audio", "video"):
                problems.append(f"config key '{where}.encoder.kind': {encoder['kind']!r} reads {reads} but corpus.media is false (no media)")
        if encoder["kind"] == CSD_KIND and corpus_kind != "mosei_csd":
            problems.append(
                f"config key '{where}.encoder.kind': csd features need a corpus of kind mosei_csd (got corpus.kind {corpus_kind!r})"
            )
    demo = config.get("demo")
    if schema_ok and demo and (
        corpus["kind"] != "meld" or os.path.normpath(str(corpus.get("root", ""))) != os.path.normpath(demo["out_dir"])
    ):
        problems.append(
            f"config key 'demo.out_dir': the demo corpus is MELD-shaped; set corpus.kind to meld and corpus.root to "
            f"{demo['out_dir']!r} (got kind {corpus['kind']!r}, root {corpus.get('root')!r})"
        )
    if problems:
        raise ConfigError(_unique(problems), source)
    return config


def _unique(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))


def check_corpus_options(corpus: Mapping[str, Any]) -> list[str]:
    """Unknown or missing corpus options, against the adapter's signature (no data is read)."""
    from extract.corpora import ADAPTERS

    adapter = ADAPTERS[corpus["kind"]]
    parameters = {n: p for n, p in inspect.signature(adapter).parameters.items() if n != "report"}
    problems = [
        f"config key 'corpus.{key}': unknown option for corpus kind {corpus['kind']!r} (accepted: {', '.join(parameters)})"
        for key in corpus
        if key != "kind" and key not in parameters
    ]
    problems += [
        f"config key 'corpus.{name}': required for corpus kind {corpus['kind']!r}"
        for name, p in parameters.items()
        if p.default is inspect.Parameter.empty and name not in corpus
    ]
    return problems


def check_encoder_options(encoder: Mapping[str, Any], where: str) -> list[str]:
    """Options the encoder class does not accept (the schema may lag behind the code)."""
    kind = encoder["kind"]
    if kind == CSD_KIND:
        return []
    options = {k: v for k, v in encoder.items() if k != "kind"}
    problems = [
        f"config key '{where}.{key}': set by the workflow (the feature set's name/device), not an encoder option"
        for key in options
        if key in WORKFLOW_SET_ARGS
    ]
    accepted = encoder_parameters(kind)
    problems += [
        f"config key '{where}.{key}': encoder kind {kind!r} has no option {key!r} (accepted: {', '.join(sorted(accepted))})"
        for key in options
        if key not in accepted and key not in WORKFLOW_SET_ARGS
    ]
    return problems


def encoder_class(kind: str):
    from extract.encoders import encoder_class as registry_class

    return registry_class(kind)


def encoder_parameters(kind: str) -> set[str]:
    signature = inspect.signature(encoder_class(kind).__init__)
    return {n for n, p in signature.parameters.items() if n != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}


def load_config(source: str | os.PathLike | Mapping[str, Any]) -> dict:
    """Read (YAML/JSON file) or take a mapping, and validate it."""
    if isinstance(source, Mapping):
        return validate_config(source)
    path = Path(source)
    try:
        with open(path, encoding="utf-8") as handle:
            data = yaml.safe_load(handle)
    except OSError as err:
        raise ConfigError([f"cannot read config file ({err.strerror})"], str(path)) from None
    except yaml.YAMLError as err:
        raise ConfigError([f"not valid YAML ({err})"], str(path)) from None
    if not isinstance(data, dict):
        raise ConfigError(["the file must hold a mapping of config keys"], str(path))
    return validate_config(data, str(path))


# ------------------------------------------------------------------------------ feature specs


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


@dataclass(frozen=True)
class RuntimeArgs:
    """How a job runs (not what it computes): rendered as CLI flags in a shell command.

    Deliberately not a builtin type: Snakemake's params rerun trigger only tracks builtin
    values, so changing these does not rerun finished jobs (see module docstring).
    """

    values: tuple[tuple[str, Any], ...]

    def as_dict(self) -> dict[str, Any]:
        return dict(self.values)

    def __str__(self) -> str:
        return f"--runtime {shlex.quote(canonical_json(self.as_dict()))}"


@dataclass(frozen=True)
class FeatureSpec:
    """One configured feature set, as the rules and jobs use it."""

    name: str
    encoder: dict
    dtype: str
    device: str
    max_cost: float | None
    max_batch: int | None
    threads: int
    num_workers: int
    strict: bool

    @classmethod
    def from_config(cls, block: Mapping[str, Any], config: Mapping[str, Any]) -> "FeatureSpec":
        encoder = dict(block["encoder"])
        if encoder["kind"] == CSD_KIND:
            encoder.setdefault("root", config["corpus"]["root"])
        strict = block.get("strict")
        return cls(
            name=block["name"],
            encoder=encoder,
            dtype=block["dtype"],
            device=block["device"],
            max_cost=block["batch"].get("max_cost"),
            max_batch=block["batch"].get("max_batch"),
            threads=int(block["threads"]),
            num_workers=int(block["num_workers"]),
            strict=bool(config["strict"] if strict is None else strict),
        )

    @property
    def kind(self) -> str:
        return self.encoder["kind"]

    @property
    def modality(self) -> str:
        if self.kind == CSD_KIND:
            return CSD_MODALITIES[self.encoder["modality"]]
        return encoder_class(self.kind).modality

    @property
    def uses_gpu(self) -> bool:
        """A neural encoder that may run on CUDA (device cuda or auto)."""
        return self.kind in NEURAL_KINDS and self.device != "cpu"

    def value_config(self) -> dict:
        """What decides the stored values: the rerun trigger and `extraction_config`."""
        return {"name": self.name, "encoder": self.encoder, "dtype": self.dtype}

    def value_json(self) -> str:
        return canonical_json(self.value_config())

    def runtime(self) -> RuntimeArgs:
        values = {
            "device": self.device,
            "max_cost": self.max_cost,
            "max_batch": self.max_batch,
            "threads": self.threads,
            "num_workers": self.num_workers,
            "strict": self.strict,
        }
        return RuntimeArgs(tuple(sorted(values.items())))


def feature_specs(config: Mapping[str, Any]) -> dict[str, FeatureSpec]:
    return {block["name"]: FeatureSpec.from_config(block, config) for block in config["features"]}


# ------------------------------------------------------------------------------ corpus inputs


def corpus_input_files(corpus: Mapping[str, Any]) -> list[str]:
    """Files whose change should rebuild the utterance table (Snakemake inputs of `table`).

    Cheap: names only, nothing is parsed. Paths are as written in the config (relative to
    the working directory).
    """
    kind = corpus["kind"]
    if kind == "manifest":
        return [str(corpus["path"])]
    if kind == "meld":
        root = Path(corpus["root"])
        pattern = corpus.get("csv_pattern", "{split}_sent_emo.csv")
        splits = corpus.get("splits")
        if splits is None:  # the adapter loads every split whose CSV exists
            return [str(root / pattern.format(split=s)) for s in ("train", "dev", "test") if (root / pattern.format(split=s)).is_file()]
        return [str(root / pattern.format(split=s)) for s in splits]
    if kind == "mosei_csd":
        from extract.corpora.mosei import LABELS_FILE, WORDS_FILE

        root = Path(corpus["root"])
        names = [corpus.get("labels_file", LABELS_FILE), corpus.get("words_file", WORDS_FILE), corpus.get("folds")]
        return [str(p if Path(p).is_absolute() else root / p) for p in names if p]
    if kind == "audio_folder":
        return [str(corpus["root"])]  # the folder's mtime changes when files come or go
    raise ValueError(f"unknown corpus kind {kind!r}")


def demo_corpus_files(config: Mapping[str, Any]) -> list[str]:
    """The demo generator's CSVs (Snakemake outputs of the `demo_corpus` rule)."""
    demo = config.get("demo")
    if not demo:
        return []
    return [str(Path(demo["out_dir"]) / f"{split}_sent_emo.csv") for split in ("train", "dev", "test")]


# ------------------------------------------------------------------------------ shards

SHARD_FORMAT_VERSION = 1
# Table columns a part job needs; copied into the shard file so jobs never read the cache
# while the table step may be rewriting it.
SHARD_COLUMNS = ("id", "text", "audio_path", "video_path", "start", "end", "media_missing_reason",
                 "text_missing_reason", "video_id")


def plan_shards(n_utterances: int, shard_size: int) -> list[tuple[int, int]]:
    """[(row_start, row_stop)] covering 0..n in fixed-size blocks (the last may be short)."""
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    return [(start, min(start + shard_size, n_utterances)) for start in range(0, n_utterances, shard_size)]


def shard_name(index: int) -> str:
    return f"{index:05d}"


def _cell(value: Any) -> Any:
    if isinstance(value, (float, int)) and not isinstance(value, bool):
        value = float(value)
        return None if math.isnan(value) else value
    if hasattr(value, "item"):  # numpy scalar
        return _cell(value.item())
    return str(value)


def shard_payload(columns: Mapping[str, Any], start: int, stop: int, media_times_are_offsets: bool, source: str) -> dict:
    """Everything a part job needs about rows start..stop-1, as JSON-ready data."""
    present = [c for c in SHARD_COLUMNS if c in columns]
    rows = []
    for row in range(start, stop):
        record = {c: _cell(columns[c][row]) for c in present}
        rows.append(record)
    payload = {
        "format": SHARD_FORMAT_VERSION,
        "row_start": start,
        "row_stop": stop,
        "media_times_are_offsets": bool(media_times_are_offsets),
        "source": source,
        "rows": rows,
    }
    payload["digest"] = hashlib.sha256(canonical_json(payload).encode("utf-8")).hexdigest()
    return payload


def write_if_changed(path: str | os.PathLike, text: str) -> bool:
    """Write `text` atomically unless the file already holds exactly it; True if written.

    Leaving an unchanged file alone keeps its mtime, which is what tells Snakemake that the
    jobs reading it are up to date.
    """
    path = Path(path)
    try:
        if path.read_text(encoding="utf-8") == text:
            return False
    except (OSError, UnicodeDecodeError):
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return True
