"""Micro-benchmarks: ``python -m bench.<name>``; they print numbers and assert nothing."""
