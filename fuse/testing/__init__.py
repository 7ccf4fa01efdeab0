"""Generators for tests and benchmarks (never used by `fuse` commands).

    synthetic_cache.py  a feature cache with label-dependent random features, any size
"""
