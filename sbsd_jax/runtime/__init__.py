"""Process plumbing, below every other layer: where run files live (local or gs://), glibc
malloc tuning, default XLA flags, which JAX platforms may start, what compute_dtype='auto'
means on this host, SIGTERM / preemption, and joining a multi-process job. Nothing here
imports the rest of sbsd_jax."""
