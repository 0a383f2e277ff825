# Nothing here is needed by the build; `make bench` runs the benchmark (docs/benchmarks.md).
.PHONY: bench

bench:
	.venv/bin/python -m bench
