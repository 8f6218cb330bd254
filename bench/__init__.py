"""Benchmarks (run as modules: `python -m bench.index_bench`)."""
