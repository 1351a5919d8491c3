"""Decoding-based evaluation and metrics."""
