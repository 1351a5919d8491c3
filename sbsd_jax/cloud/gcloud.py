"""The gcloud command lines for one Cloud TPU slice, as argv lists.

Pure functions of a frozen `TpuSlice`: what a dry run prints is exactly what a real run
executes, and tests compare them without a cloud. Flags are those of `gcloud compute tpus
tpu-vm create/describe/delete/ssh/scp`, `gcloud compute tpus queued-resources
create/describe/delete` and `gcloud storage` (Google Cloud SDK 528).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence

# The TPU software version each generation's JAX images use (cloud.google.com/tpu/docs/runtimes).
_RUNTIME_BY_GENERATION = (
    ("v6e", "v2-alpha-tpuv6e"),
    ("v5p", "v2-alpha-tpuv5"),
    ("v5litepod", "v2-alpha-tpuv5-lite"),
    ("v5e", "v2-alpha-tpuv5-lite"),
    ("v4", "tpu-ubuntu2204-base"),
    ("v3", "tpu-ubuntu2204-base"),
    ("v2", "tpu-ubuntu2204-base"),
)
_ACCELERATOR_TYPE = re.compile(r"^v[0-9][a-z0-9]*-[0-9]+$")

# Slice states. A node: READY, CREATING, PREEMPTED, ...; a queued resource: ACTIVE,
# WAITING_FOR_RESOURCES, SUSPENDED, ... Dead ones are deleted and created again; any state not
# listed (CREATING, PROVISIONING, DELETING, ...) is waited out.
READY_STATES = frozenset({"READY", "ACTIVE"})
DEAD_STATES = frozenset({"PREEMPTED", "TERMINATED", "STOPPED", "FAILED", "SUSPENDED"})


def default_runtime_version(accelerator_type: str) -> str:
    """The runtime (VM image) for an accelerator type, e.g. v4-32 -> tpu-ubuntu2204-base."""
    for generation, runtime in _RUNTIME_BY_GENERATION:
        if accelerator_type.startswith(generation + "-"):
            return runtime
    raise ValueError(
        f"--accelerator_type={accelerator_type}: no default runtime version known; "
        "give --runtime_version (see cloud.google.com/tpu/docs/runtimes)"
    )


def slice_condition(state: str | None) -> str:
    """'ready', 'gone' (absent or dead: create it again) or 'waiting'."""
    if state is None or state in DEAD_STATES:
        return "gone"
    return "ready" if state in READY_STATES else "waiting"


@dataclasses.dataclass(frozen=True)
class TpuSlice:
    """A TPU VM (one host) or pod slice (several), created directly or as a queued resource.

    A queued resource has the same id as the node it creates, so one name addresses both."""

    name: str
    zone: str
    accelerator_type: str = ""
    runtime_version: str = ""  # "" -> default_runtime_version(accelerator_type)
    project: str = ""
    spot: bool = False
    preemptible: bool = False  # the older, 24-hour kind; tpu-vm create only
    queued: bool = False  # queued-resources create: waits in line for capacity
    valid_until_duration: str = ""  # queued only: stop waiting after this long, e.g. "6h"

    def __post_init__(self) -> None:
        problems = []
        if not self.name:
            problems.append("--name is required")
        if not self.zone:
            problems.append("--zone is required")
        if self.accelerator_type and not _ACCELERATOR_TYPE.match(self.accelerator_type):
            problems.append(
                f"--accelerator_type={self.accelerator_type}: expected e.g. v4-32, "
                "v5litepod-8, v5p-32, v6e-8"
            )
        if self.spot and self.preemptible:
            problems.append("--spot and --preemptible exclude each other (prefer --spot)")
        if self.queued and self.preemptible:
            problems.append("a queued resource is --spot or on-demand, not --preemptible")
        if self.valid_until_duration and not self.queued:
            problems.append("--valid_until_duration needs --queued")
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def runtime(self) -> str:
        return self.runtime_version or default_runtime_version(self.accelerator_type)

    def _where(self) -> list[str]:
        return [f"--zone={self.zone}"] + ([f"--project={self.project}"] if self.project else [])


_TPU_VM = ["gcloud", "compute", "tpus", "tpu-vm"]
_QUEUED = ["gcloud", "compute", "tpus", "queued-resources"]


def create(tpu: TpuSlice) -> list[str]:
    """Creates the node (waits until it exists) or queues a request for it."""
    if not tpu.accelerator_type:
        raise ValueError("--accelerator_type is required to create a slice (e.g. v4-32)")
    if tpu.queued:
        argv = [*_QUEUED, "create", tpu.name, f"--node-id={tpu.name}", *tpu._where()]
        argv += [f"--accelerator-type={tpu.accelerator_type}", f"--runtime-version={tpu.runtime}"]
        if tpu.valid_until_duration:
            argv.append(f"--valid-until-duration={tpu.valid_until_duration}")
    else:
        argv = [*_TPU_VM, "create", tpu.name, *tpu._where()]
        argv += [f"--accelerator-type={tpu.accelerator_type}", f"--version={tpu.runtime}"]
        if tpu.preemptible:
            argv.append("--preemptible")
    if tpu.spot:
        argv.append("--spot")
    return argv


def describe_state(tpu: TpuSlice) -> list[str]:
    """Prints one word: the node's state, or the queued resource's."""
    if tpu.queued:
        return [*_QUEUED, "describe", tpu.name, *tpu._where(), "--format=value(state.state)"]
    return [*_TPU_VM, "describe", tpu.name, *tpu._where(), "--format=value(state)"]


def delete(tpu: TpuSlice) -> list[str]:
    """Deletes without asking; a queued resource together with its node (--force)."""
    if tpu.queued:
        return [*_QUEUED, "delete", tpu.name, *tpu._where(), "--force", "--quiet"]
    return [*_TPU_VM, "delete", tpu.name, *tpu._where(), "--quiet"]


def ssh(tpu: TpuSlice, command: str, worker: str = "all") -> list[str]:
    """Runs a shell command on the workers ('all', '0', '1-3', ...)."""
    return [*_TPU_VM, "ssh", tpu.name, *tpu._where(), f"--worker={worker}", f"--command={command}"]


def scp_to_workers(tpu: TpuSlice, local: str, remote: str) -> list[str]:
    return [*_TPU_VM, "scp", local, f"{tpu.name}:{remote}", *tpu._where(), "--worker=all"]


def scp_from_worker(tpu: TpuSlice, remote: str, local: str, worker: str = "0") -> list[str]:
    return [
        *_TPU_VM,
        "scp",
        "--recurse",
        f"{tpu.name}:{remote}",
        local,
        *tpu._where(),
        f"--worker={worker}",
    ]


def storage_cat(url: str) -> list[str]:
    return ["gcloud", "storage", "cat", url]


def storage_rsync(source: str, dest: str, exclude: Sequence[str] = ()) -> list[str]:
    """Copies a folder; `exclude` regexes are matched against paths relative to `source`."""
    argv = ["gcloud", "storage", "rsync", "--recursive", source, dest]
    return argv + ([f"--exclude={','.join(exclude)}"] if exclude else [])
