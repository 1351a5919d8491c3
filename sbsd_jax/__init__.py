"""sbsd-jax: Distilling Step-by-Step (Hsieh et al., 2023) in JAX / Flax NNX."""

__version__ = "0.1.0"
