"""Whole experiments built from the pieces: the embedded demo and the paper sweeps."""
