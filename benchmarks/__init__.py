"""Benchmarks and the fuzzer; a package so that `python -m benchmarks.fuzz` runs."""
