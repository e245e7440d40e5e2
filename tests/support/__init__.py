"""Helpers shared by the tests and the benchmarks (run from the repository root)."""
