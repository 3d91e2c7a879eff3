"""Measurements on stages: per-node SQNR, activation and weight inspection, checks, BN folding,
sensitivity, latency, stage diffs.
"""
