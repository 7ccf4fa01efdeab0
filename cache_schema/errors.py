"""Typed errors of the cache contract."""
from __future__ import annotations


class CacheError(Exception):
    """Any problem with a cache or with data about to be written to one."""


class NotACacheError(CacheError):
    """The path exists but is not an emofuse cache (or does not exist)."""


class SchemaVersionError(CacheError):
    """The cache was written by a schema version this code does not know."""


class FeatureSetNotFound(CacheError, KeyError):
    """A requested feature set is not in the cache."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else ""


class CacheValidationError(CacheError):
    """`validate` found problems; `.problems` lists every one of them."""

    def __init__(self, path: str, problems: list[str]):
        self.path = path
        self.problems = list(problems)
        super().__init__(f"{path}: {len(problems)} problem(s):\n" + "\n".join(f"  - {p}" for p in problems))
