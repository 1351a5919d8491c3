"""Mesh, batch partitioning, the multi-task train step, checkpoints and the train loop; each
function takes its piece of the run's settings (sbsd_jax.settings.spec)."""
