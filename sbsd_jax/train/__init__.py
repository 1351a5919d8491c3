"""Mesh, partitioning, the multi-task train step, checkpoints and the train loop."""
