"""What the `fuse` subcommands share: the one-line error exit, and click options derived from
the training options schema (`fuse.options`), so flags never drift from the options."""
from __future__ import annotations

import sys
import types
import typing
from typing import Any, Literal

import annotated_types
import click
import yaml


def fail(message: str, code: int = 2) -> typing.NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def refuse_run_file(target) -> None:
    """An output file must not replace a file of a run folder, and its folder must exist."""
    from pathlib import Path

    from fuse.runs.folders import BEST, CONFIG_FILE, LAST

    target = Path(target)
    parent = target.resolve().parent
    if not parent.is_dir():
        fail(f"{target}: folder {parent} does not exist")
    if target.exists() and any((parent / name).is_file() for name in (BEST, LAST, CONFIG_FILE)):
        fail(f"{target}: refusing to replace a file of the run folder {parent}; write elsewhere")
    if target.is_dir():
        fail(f"{target}: is a folder; give a file name")


def flag_name(field: str) -> str:
    return "--" + field.replace("_", "-")


def _click_type(annotation: Any, metadata: list) -> Any:
    """The click type of a scalar option: Choice for Literals, ranges from ge/gt/le bounds."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
    base = annotation
    if typing.get_origin(base) is Literal:
        return click.Choice(list(typing.get_args(base)))
    low = next((m.ge for m in metadata if isinstance(m, annotated_types.Ge)), None)
    above = next((m.gt for m in metadata if isinstance(m, annotated_types.Gt)), None)
    high = next((m.le for m in metadata if isinstance(m, annotated_types.Le)), None)
    bounded = low is not None or above is not None or high is not None
    if base is int:
        return click.IntRange(min=low, max=high) if bounded else click.INT
    if base is float:
        return click.FloatRange(min=low if above is None else above, max=high, min_open=above is not None) if bounded else click.FLOAT
    return click.STRING


def _is_sequence(annotation: Any) -> bool:
    """list[...] or tuple[...] options, written on the command line comma-separated."""
    return "list[" in str(annotation) or "tuple[" in str(annotation)


def _is_bool(annotation: Any) -> bool:
    return annotation is bool or set(typing.get_args(annotation)) == {bool, type(None)}


def options_from_schema(group: type):
    """A decorator adding one click option per field of `group` (fuse.options).

    Every option defaults to None (= not given), so a `--config` file and then the schema's
    defaults fill what the command line leaves out. Booleans get `--x/--no-x`; mappings are
    repeatable KEY=VALUE options (`--set` for model_config, `--max-len`); lists are
    comma-separated ('none' for empty).
    """
    from fuse.options import fields_info

    def decorate(command):
        for name, info in reversed(list(fields_info(group).items())):
            extra = info.json_schema_extra or {}
            default = "" if info.default_factory is not None or info.default is None else f" [default: {info.default}]"
            help_text = (info.description or "") + ("" if "[" in (info.description or "") else default)
            origin = typing.get_origin(info.annotation)
            hidden = bool(extra.get("hidden"))
            if _is_bool(info.annotation):
                option = click.option(f"{flag_name(name)}/--no-{name.replace('_', '-')}", name, default=None, help=help_text, hidden=hidden)
            elif origin is dict:
                option = click.option(extra.get("cli", flag_name(name)), name, multiple=True, help=help_text, hidden=hidden)
            else:
                kind = click.STRING if _is_sequence(info.annotation) else _click_type(info.annotation, info.metadata)
                option = click.option(flag_name(name), name, type=kind, default=None, help=help_text, hidden=hidden)
            command = option(command)
        return command

    return decorate


def parse_pairs(values, flag: str) -> dict:
    """("a=1", "b=x,c=2") -> {"a": 1, "b": "x", "c": 2}; values read as YAML scalars."""
    pairs = {}
    for item in values:
        for part in (p for p in item.split(",") if p.strip()):
            if "=" not in part:
                raise click.BadParameter(f"expected KEY=VALUE, got {part!r}", param_hint=flag)
            key, value = part.split("=", 1)
            try:
                pairs[key.strip()] = yaml.safe_load(value.strip())
            except yaml.YAMLError as exc:
                raise click.BadParameter(f"{part!r}: {exc}", param_hint=flag) from None
    return pairs


def given_options(group: type, params: dict[str, Any]) -> dict[str, Any]:
    """The options of `group` the command line set, in the schema's types (lists, mappings)."""
    from fuse.options import fields_info

    given = {}
    for name, info in fields_info(group).items():
        value = params.get(name)
        if value is None or value == ():
            continue
        if typing.get_origin(info.annotation) is dict:
            value = parse_pairs(value, (info.json_schema_extra or {}).get("cli", flag_name(name)))
        elif _is_sequence(info.annotation):
            value = [] if value.strip().lower() == "none" else [v.strip() for v in value.split(",") if v.strip()]
        given[name] = value
    return given


def storage_option_flag(command):
    """`--storage-option KEY=VALUE` (repeatable): fsspec options for a cache given as a URL."""
    return click.option(
        "--storage-option",
        "storage_option",
        multiple=True,
        metavar="KEY=VALUE",
        help="fsspec option for a URL cache, e.g. endpoint_url=http://localhost:9000 (repeatable; "
        "credentials: the backend's standard variables, e.g. AWS_ACCESS_KEY_ID). See docs/scaling.md.",
    )(command)


def apply_storage_options(where, pairs) -> None:
    """Make --storage-option the fsspec defaults for `where`'s protocol, for this process."""
    if not pairs:
        return
    from cache_schema import CacheError
    from cache_schema.store import configure, parse_storage_options

    try:
        configure(str(where), parse_storage_options(parse_pairs(pairs, "--storage-option")))
    except CacheError as exc:
        fail(str(exc))
