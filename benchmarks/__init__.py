"""Benchmarks: ratios of the workbench against bare torchao on the same work (`make bench`)."""
