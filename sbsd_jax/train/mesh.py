"""The device mesh ('data', 'fsdp', 'tensor') from the config, on one host or many.

`config.mesh.{data,fsdp,tensor}` give the axis sizes; one of them may be -1 to take all
remaining devices. `config.mesh.dcn_data` > 1 spreads the data axis over several slices
(multi-slice TPU): the other axes stay inside a slice, on the fast interconnect.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import jax
import ml_collections
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh

from sbsd_jax.train.partitioning import MESH_AXES

# Multi-host GPU (and anything JAX cannot discover itself): launch/gpu_host.sh documents these.
ENV_COORDINATOR = "SBSD_COORDINATOR"
ENV_NUM_PROCESSES = "SBSD_NUM_PROCESSES"
ENV_PROCESS_ID = "SBSD_PROCESS_ID"


class MeshShapeError(ValueError):
    """The configured mesh does not fit the devices."""


def resolve_mesh_shape(mesh_config: ml_collections.ConfigDict, num_devices: int) -> tuple[int, ...]:
    """(data, fsdp, tensor) with any -1 filled in; data includes the dcn_data factor.

    Raises MeshShapeError saying which field to change when the sizes do not fit.
    """
    sizes = [int(mesh_config[name]) for name in MESH_AXES]
    dcn_data = int(mesh_config.get("dcn_data", 1))
    if dcn_data < 1:
        raise MeshShapeError(f"config.mesh.dcn_data must be >= 1, got {dcn_data}")
    fill = [i for i, size in enumerate(sizes) if size == -1]
    if len(fill) > 1:
        raise MeshShapeError(
            "only one of config.mesh.data/fsdp/tensor may be -1 (fill); got "
            + ", ".join(f"{n}={s}" for n, s in zip(MESH_AXES, sizes, strict=True))
        )
    bad = [f"{n}={s}" for n, s in zip(MESH_AXES, sizes, strict=True) if s == 0 or s < -1]
    if bad:
        raise MeshShapeError(f"config.mesh sizes must be positive or -1 (fill), got {bad}")
    if sizes[0] != -1:
        sizes[0] *= dcn_data  # a filled data axis already spans every slice
    fixed = int(np.prod([s for s in sizes if s != -1]))
    if fill:
        if num_devices % fixed:
            raise MeshShapeError(
                f"the fixed mesh axes multiply to {fixed}, which does not divide the "
                f"{num_devices} devices; change config.mesh so the product divides {num_devices}"
            )
        sizes[fill[0]] = num_devices // fixed
    total = int(np.prod(sizes))
    if total > num_devices:
        raise MeshShapeError(
            f"config.mesh needs data*fsdp*tensor = {'*'.join(map(str, sizes))} = {total} devices "
            f"but only {num_devices} are available; shrink config.mesh (or set one axis to -1)"
        )
    if sizes[0] % dcn_data:
        raise MeshShapeError(
            f"the data axis ({sizes[0]}) is not a multiple of config.mesh.dcn_data={dcn_data}"
        )
    return tuple(sizes)


def make_mesh(
    config: ml_collections.ConfigDict, devices: Sequence[jax.Device] | None = None
) -> Mesh:
    """A Mesh with axes ('data', 'fsdp', 'tensor') over `devices` (default: all devices).

    A mesh smaller than the device list uses its first devices (single process only). The
    device order follows the physical topology (mesh_utils), so the tensor axis, the most
    talkative, lands on neighbouring chips.
    """
    devices = list(jax.devices() if devices is None else devices)
    shape = resolve_mesh_shape(config.mesh, len(devices))
    total = int(np.prod(shape))
    dcn_data = int(config.mesh.get("dcn_data", 1))
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


def _on_cloud_tpu_vm() -> bool:
    """TPU chips attached to this host (a Cloud TPU VM), checked without starting a backend."""
    try:
        from jax._src import hardware_utils

        chips, _ = hardware_utils.num_available_tpu_chips_and_device_id()
        return chips > 0
    except Exception:  # a private helper: if it moves, fall back to the explicit signals
        return False


def _launcher_started_several_processes() -> bool:
    tpu_hosts = [h for h in os.environ.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]
    return (
        len(tpu_hosts) > 1
        or bool(os.environ.get("MEGASCALE_COORDINATOR_ADDRESS"))  # multi-slice
        or int(os.environ.get("SLURM_NTASKS", "1")) > 1
        or int(os.environ.get("OMPI_COMM_WORLD_SIZE", "1")) > 1
    )


def _use_gloo_on_cpu() -> None:
    """CPU-only processes need gloo for cross-process collectives (the default has none)."""
    platforms = [p for p in (jax.config.jax_platforms or "").split(",") if p]
    if platforms == ["cpu"]:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")


def maybe_initialize_distributed(config: ml_collections.ConfigDict | None = None) -> bool:
    """Calls jax.distributed.initialize when this process is part of a multi-process job.

    config.distributed.mode: 'off' never initialises; 'on' always does; 'auto' (default) does
    when a coordinator is given (config.distributed.coordinator_address / num_processes /
    process_id, else SBSD_COORDINATOR / SBSD_NUM_PROCESSES / SBSD_PROCESS_ID), on a Cloud
    TPU VM (JAX finds its peers itself; one host works too), or under a multi-process
    launcher (GKE TPU, multi-slice, SLURM, Open MPI). A single CPU/GPU process needs nothing.
    Returns True if it initialised. Must run before anything touches jax.devices().
    """
    if jax.distributed.is_initialized():
        return True  # already joined (e.g. an earlier cell of a sweep in this process)
    dist = config.get("distributed", {}) if config is not None else {}
    mode = dist.get("mode", "auto") or "auto"
    if mode not in ("auto", "on", "off"):
        raise ValueError(f"config.distributed.mode={mode!r}: choose auto, on or off")
    if mode == "off":
        return False
    coordinator = dist.get("coordinator_address", "") or os.environ.get(ENV_COORDINATOR, "")
    num_processes = int(dist.get("num_processes", 0) or os.environ.get(ENV_NUM_PROCESSES, 0))
    process_id = dist.get("process_id", -1)
    if process_id is None or int(process_id) < 0:
        process_id = int(os.environ.get(ENV_PROCESS_ID, -1))
    if coordinator:
        if num_processes < 1 or process_id < 0:
            raise ValueError(
                f"a coordinator address ({coordinator}) needs the number of processes and this "
                f"process's id: set config.distributed.num_processes/process_id or "
                f"{ENV_NUM_PROCESSES}/{ENV_PROCESS_ID}"
            )
        if num_processes == 1 and mode == "auto":
            return False
        _use_gloo_on_cpu()
        jax.distributed.initialize(coordinator, num_processes=num_processes, process_id=process_id)
    elif mode == "on" or _on_cloud_tpu_vm() or _launcher_started_several_processes():
        _use_gloo_on_cpu()
        jax.distributed.initialize()
    else:
        return False
    logging.info("jax.distributed: process %d of %d", jax.process_index(), jax.process_count())
    return True
