"""A run's settings as frozen, typed pieces (`RunSpec`), and the one boundary where the user's
ml_collections config becomes them.

`spec.py` holds the dataclasses (no ml_collections: every layer below the entry points
imports them); `validation.py` checks a ConfigDict and `from_config.py` turns a validated one
into a RunSpec. Only the entry points (sbsd_jax.main, aot, the demo, the sweep, data.inspect,
the teacher) call the latter two.
"""
