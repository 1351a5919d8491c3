"""Launching training on Cloud TPU slices and GPU clusters: `python -m sbsd_jax.cloud STEP ...`.

Process plumbing only (gcloud, sbatch, ssh command lines and the loop that watches a run); it
imports nothing from the trainer, so it starts in a fraction of a second on a laptop.

  gcloud.py        the gcloud command lines for a slice (pure: a dry run prints exactly these)
  runner.py        runs a command, or prints it shell-quoted under --dry_run
  tpu.py           the steps on one slice: create, run, logs, status, copy, delete
  watch.py         re-create a preempted slice and run the same command until the run is DONE
  sweep_cells.py   the cells of `sbsd_jax.experiments.sweep --dry_run` as training jobs
  gpu.py           SLURM (sbatch, one task per node) and a single multi-GPU host
"""
