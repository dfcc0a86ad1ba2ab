"""Benchmarks of the real stack on loopback: `make bench` (bench/run.py) and the
engine-level `bench/engines.py`."""
