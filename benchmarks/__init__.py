"""Benchmarks of the BigEarthNet.txt builder against baselines measured in the same run (``python benchmarks/run.py``)."""
