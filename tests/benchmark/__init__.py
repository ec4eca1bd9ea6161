"""Benchmarks run by hand (``python tests/benchmark/bench_fleet.py``); never collected."""
