"""Benchmarks: `python -m bench.runtime` (see bench/README.md)."""
