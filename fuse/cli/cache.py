"""`fuse cache info|validate PATH` (a folder or a URL), `fuse cache upgrade PATH`, `fuse cache push|pull` (object storage)."""
from __future__ import annotations

import sys

import click
import numpy as np

from cache_schema import CacheError, CacheValidationError, open_cache, validate
from fuse.cli.common import apply_storage_options, storage_option_flag


def _fail(exc: Exception) -> None:
    click.echo(f"error: {exc}", err=True)
    sys.exit(2)


@click.group("cache")
def cache() -> None:
    """Inspect and validate a feature cache."""


@cache.command("validate")
@click.argument("path", type=click.Path())
@click.option("--deep", is_flag=True, help="Also scan every value for NaN/inf (reads the whole cache).")
@storage_option_flag
def validate_command(path: str, deep: bool, storage_option) -> None:
    """Check PATH (a folder or a URL) against the cache contract; exit 1 listing every problem."""
    apply_storage_options(path, storage_option)
    try:
        c = validate(path, deep=deep)
    except CacheValidationError as exc:
        click.echo(str(exc), err=True)
        sys.exit(1)
    except CacheError as exc:
        _fail(exc)
    click.echo(f"{path}: valid (schema v{c.schema_version}, {c.n_utterances} utterances, {len(c.feature_names())} feature sets)")


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


@cache.command("info")
@click.argument("path", type=click.Path())
@storage_option_flag
def info_command(path: str, storage_option) -> None:
    """Summarise PATH (a folder or a URL): utterances per split, each feature set's shape, coverage and size."""
    apply_storage_options(path, storage_option)
    try:
        c = open_cache(path)
        split = c.column("split")
        labels = c.table.label_names or c.table.labels_multi_names
    except CacheError as exc:
        _fail(exc)
    click.echo(f"cache: {path}")
    click.echo(f"schema v{c.schema_version}.{c.schema_minor}, written by emofuse {c.attrs.get('producer_version')}, updated {c.attrs.get('updated')}")
    names, counts = np.unique(split.astype(str), return_counts=True)
    click.echo(f"utterances: {c.n_utterances} (" + ", ".join(f"{s or '-'}: {k}" for s, k in zip(names, counts)) + ")")
    if labels:
        click.echo(f"labels: {', '.join(labels)}")
    rows = []
    for name, fs in c.feature_sets().items():
        lengths = fs.lengths[fs.present] if fs.present.any() else np.zeros(1)
        size, files = fs.disk_usage()
        rows.append(
            (
                name,
                str(fs.dim),
                fs.dtype,
                f"{lengths.mean():.1f}",
                str(int(lengths.max())),
                f"{fs.present.mean() * 100 if len(fs.present) else 0:.1f}%",
                str(int(fs.attrs.get("n_failures", 0))),
                _human(size),
                str(files),
                fs.fingerprint[len("sha256:") : len("sha256:") + 12] if fs.fingerprint else "unknown",
            )
        )
    header = ("feature set", "dim", "dtype", "mean len", "max len", "coverage", "failures", "on disk", "files", "fingerprint")
    if not rows:
        click.echo("feature sets: none")
        return
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    line = "  ".join(h.ljust(w) for h, w in zip(header, widths))
    click.echo(line)
    click.echo("  ".join("-" * w for w in widths))
    for r in rows:
        click.echo("  ".join(v.ljust(w) for v, w in zip(r, widths)))


# Object storage: caches are written locally and copied whole (cache_schema/transfer.py).


def _report_transfer(report) -> None:
    fingerprints = ", ".join(f"{name} {fp[len('sha256:') : len('sha256:') + 12] if fp else 'unknown'}" for name, fp in report.feature_sets.items())
    click.echo(f"copied {report.source} -> {report.destination}: {report.files} files, {_human(report.bytes)}")
    click.echo(f"verified: valid, {report.n_utterances} utterances, same files and fingerprints ({fingerprints or 'no feature sets'})")


def _transfer(copy, source: str, destination: str, url: str, force: bool, storage_option) -> None:
    """Run `copy(source, destination)` (push or pull) with the URL's storage options; report it."""
    apply_storage_options(url, storage_option)
    try:
        report = copy(source, destination, force=force)
    except CacheValidationError as exc:
        click.echo(str(exc), err=True)
        sys.exit(1)
    except CacheError as exc:
        _fail(exc)
    _report_transfer(report)


@cache.command("push")
@click.argument("local", type=click.Path(exists=True, file_okay=False))
@click.argument("url")
@click.option("--force", is_flag=True, help="Replace an existing cache at URL.")
@storage_option_flag
def push_command(local: str, url: str, force: bool, storage_option) -> None:
    """Copy the finished local cache LOCAL to object storage at URL (e.g. s3://bucket/feats.zarr)."""
    from cache_schema.transfer import push

    _transfer(push, local, url, url, force, storage_option)


@cache.command("pull")
@click.argument("url")
@click.argument("local", type=click.Path())
@click.option("--force", is_flag=True, help="Replace an existing local cache at LOCAL.")
@storage_option_flag
def pull_command(url: str, local: str, force: bool, storage_option) -> None:
    """Copy the cache at URL into the local folder LOCAL (staged, verified, then swapped in)."""
    from cache_schema.transfer import pull

    _transfer(pull, url, local, url, force, storage_option)


@cache.command("upgrade")
@click.argument("path", type=click.Path())
def upgrade_command(path: str) -> None:
    """Rewrite PATH in place to the current layout (atomically, one feature set at a time).

    Refuses when PATH is already current or another process is writing it.
    """
    from cache_schema import SCHEMA_MINOR, SCHEMA_VERSION, upgrade_cache

    try:
        names = upgrade_cache(path, progress=lambda name: click.echo(f"rewriting {name} ...", err=True))
    except CacheError as exc:
        _fail(exc)
    click.echo(f"{path}: upgraded to schema {SCHEMA_VERSION}.{SCHEMA_MINOR} ({len(names)} feature set(s) rewritten: {', '.join(names) or 'none'})")
