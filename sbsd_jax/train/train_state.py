"""Everything a training run carries from one step to the next, as one pytree.

A plain pytree (not an nnx.Optimizer) so the step is a pure jitted function of
(state, batch) -> state, the whole state can be donated, given explicit shardings, built
abstractly with jax.eval_shape for AOT compilation, and saved / restored by Orbax as is
(`ocp.args.StandardSave(state)` / `StandardRestore(abstract_state_with_shardings)`).
The model's structure (its nnx.GraphDef) is static and lives outside, in the step's closure.
"""

from __future__ import annotations

import flax.struct
import jax
import optax
from flax import nnx


@flax.struct.dataclass
class TrainState:
    """step: optimizer steps taken (int32 scalar); params: the model's nnx.Param state (its
    Variables keep their logical axis names); opt_state: the optax state for those params."""

    step: jax.Array
    params: nnx.State
    opt_state: optax.OptState
