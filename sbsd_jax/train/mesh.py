"""The device mesh ('data', 'fsdp', 'tensor') from a MeshSpec, on one host or many.

`spec.data / fsdp / tensor` give the axis sizes (config.mesh); one of them may be -1 to take all
remaining devices. `spec.dcn_data` > 1 spreads the data axis over several slices (multi-slice
TPU): the other axes stay inside a slice, on the fast interconnect. Joining a multi-process
job is sbsd_jax.runtime.distributed.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh

from sbsd_jax.model.sharding import MESH_AXES
from sbsd_jax.settings.spec import MeshSpec


def make_mesh(spec: MeshSpec, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A Mesh with axes ('data', 'fsdp', 'tensor') over `devices` (default: all devices).

    A mesh smaller than the device list uses its first devices (single process only). The
    device order follows the physical topology (mesh_utils), so the tensor axis, the most
    talkative, lands on neighbouring chips. Raises settings.spec.MeshShapeError when the sizes
    do not fit the devices.
    """
    devices = list(jax.devices() if devices is None else devices)
    shape = spec.shape(len(devices))
    total = int(np.prod(shape))
    dcn_data = spec.dcn_data
    if dcn_data > 1:
        ici_shape = (shape[0] // dcn_data, shape[1], shape[2])
        device_array = mesh_utils.create_hybrid_device_mesh(
            ici_shape, (dcn_data, 1, 1), devices=devices[:total]
        )
    elif total == len(devices):
        device_array = _physical_device_mesh(shape, devices)
    else:
        device_array = np.asarray(devices[:total]).reshape(shape)
    return Mesh(device_array, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))


def _physical_device_mesh(shape: tuple[int, int, int], devices: list[jax.Device]) -> np.ndarray:
    """Devices arranged so that mesh axes follow the chips' torus; when a mesh axis must cut
    across physical axes (e.g. tensor=4 with data=2 on a 2x2x4 v4 slice), JAX refuses unless
    asked, and then splits them, as MaxText does."""
    try:
        return mesh_utils.create_device_mesh(shape, devices=devices)
    except (NotImplementedError, ValueError, AssertionError):
        return mesh_utils.create_device_mesh(shape, devices=devices, allow_split_physical_axes=True)
