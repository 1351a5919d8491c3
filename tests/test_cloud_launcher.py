"""`python -m sbsd_jax.cloud`, without a cloud: the exact gcloud / sbatch commands of its dry
runs, and the watch loop against a stand-in `gcloud` that plays a slice being preempted, taken
away and given back, and a run that finishes.

The stand-in (written by `fake_cloud` below, first on PATH) records each call's argv and
answers from a JSON state file: nodes and queued resources with their states, objects in the
bucket, and what each training ssh does ('preempt', 'gone', 'fail', 'finish').
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import pathlib
import shlex
import shutil
import subprocess
import sys
import tempfile
import textwrap

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]

FAKE_GCLOUD = r"""
import fcntl, json, os, sys

state_path, calls_path = os.environ["FAKE_CLOUD_STATE"], os.environ["FAKE_CLOUD_CALLS"]
argv = sys.argv[1:]
lock = open(state_path + ".lock", "w")
fcntl.flock(lock, fcntl.LOCK_EX)  # several slices are watched at once
with open(calls_path, "a") as calls:
    calls.write(json.dumps(argv) + "\n")
with open(state_path) as handle:
    state = json.load(handle)


def save():
    with open(state_path, "w") as handle:
        json.dump(state, handle)


def fail(message, status=1):
    print(message, file=sys.stderr)
    sys.exit(status)


def flag(name):
    return next(a.split("=", 1)[1] for a in argv if a.startswith(f"--{name}="))


group, verb = argv[2:4] if argv[0] == "compute" else (argv[0], argv[1])
if group in ("tpu-vm", "queued-resources"):
    name = argv[4] if verb != "scp" else next(a for a in argv if ":" in a).split(":")[0]
    kind = "nodes" if group == "tpu-vm" else "queued"
    table = state[kind]
    if verb == "create":
        # A node exists once create returns; a queued request waits in line first.
        table[name] = ["READY"] if kind == "nodes" else ["WAITING_FOR_RESOURCES", "ACTIVE"]
        if kind == "queued":
            state["nodes"][name] = ["READY"]
    elif name not in table and not (verb in ("ssh", "scp") and name in state["nodes"]):
        fail(f"ERROR: (gcloud.compute.tpus.{group}.{verb}) NOT_FOUND: Resource "
             f"'projects/p/locations/{flag('zone')}/nodes/{name}' was not found")
    elif verb == "describe" and state["describe_errors"] > 0:
        state["describe_errors"] -= 1
        save()
        fail("ERROR: (gcloud.compute.tpus.tpu-vm.describe) There was a problem refreshing "
             "your current auth tokens: connection reset")
    elif verb == "describe":
        states = table[name]
        print(states.pop(0) if len(states) > 1 else states[0])
    elif verb == "delete":
        del table[name]
        if kind == "queued":
            state["nodes"].pop(name, None)
    elif verb in ("ssh", "scp"):
        if state["nodes"][name][-1] != "READY":
            fail("ssh: connect to host: Connection timed out", 255)
        command = next((a for a in argv if a.startswith("--command=")), "")
        if verb == "ssh" and "tpu_worker.sh" in command:
            action = state["ssh_runs"].pop(0)
            print(f"training ({action})")
            if action == "finish":
                workdir = next(w for w in command.split() if w.startswith("--workdir="))
                marker = workdir.split("=", 1)[1] + "/DONE"
                state["objects"][marker] = json.dumps({"final_step": state["final_step"]})
            elif action == "preempt":  # the node stops; its queued resource is suspended
                state["nodes"][name] = ["PREEMPTED"]
                if name in state["queued"]:
                    state["queued"][name] = ["SUSPENDED"]
            elif action == "gone":
                del state["nodes"][name]
            save()
            sys.exit({"finish": 0, "fail": 1}.get(action, 255))
    save()
elif argv[:2] == ["storage", "cat"]:
    if argv[2] not in state["objects"]:
        fail("ERROR: (gcloud.storage.cat) The following URLs matched no objects or files:\n"
             f"-{argv[2]}")
    print(state["objects"][argv[2]], end="")
"""


class FakeCloud:
    def __init__(self, root: pathlib.Path) -> None:
        self.bin = root / "bin"
        self.bin.mkdir()
        self.state_path = root / "cloud_state.json"
        self.calls_path = root / "gcloud_calls.jsonl"
        (self.bin / "gcloud").write_text(f"#!{sys.executable}\n{FAKE_GCLOUD}")
        (self.bin / "tar").write_text("#!/bin/sh\nexit 0\n")  # the repository is not packed
        for tool in ("gcloud", "tar"):
            (self.bin / tool).chmod(0o755)
        self.set_state()

    def set_state(
        self, *, nodes=None, queued=None, objects=None, ssh_runs=(), final_step=100, errors=0
    ):
        state = {
            "describe_errors": errors,
            "nodes": nodes or {},
            "queued": queued or {},
            "objects": objects or {},
            "ssh_runs": list(ssh_runs),
            "final_step": final_step,
        }
        self.state_path.write_text(json.dumps(state))

    def state(self) -> dict:
        return json.loads(self.state_path.read_text())

    def calls(self) -> list[list[str]]:
        if not self.calls_path.exists():
            return []
        return [json.loads(line) for line in self.calls_path.read_text().splitlines()]

    def launch(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = {
            **os.environ,
            "PATH": f"{self.bin}{os.pathsep}{os.environ['PATH']}",
            "FAKE_CLOUD_STATE": str(self.state_path),
            "FAKE_CLOUD_CALLS": str(self.calls_path),
        }
        return subprocess.run(
            [sys.executable, "-m", "sbsd_jax.cloud", *args],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )


@pytest.fixture
def cloud(tmp_path) -> FakeCloud:
    return FakeCloud(tmp_path)


def _verbs(calls: list[list[str]]) -> list[str]:
    """'tpu-vm create', 'storage cat', ... for each call."""
    return [" ".join(c[2:4]) if c[0] == "compute" else " ".join(c[:2]) for c in calls]


def _launch_dry(args: list[str]) -> subprocess.CompletedProcess[str]:
    """A dry run with nothing stood in: the real PATH (a real gcloud, if any, must not run)."""
    return subprocess.run(
        [sys.executable, "-m", "sbsd_jax.cloud", *args[:1], "--dry_run", *args[1:]],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _commands(result: subprocess.CompletedProcess[str]) -> list[str]:
    assert result.returncode == 0, result.stderr
    return [line for line in result.stdout.splitlines() if not line.startswith("#")]


V4_POD = ["--name=pod", "--zone=us-central2-b", "--accelerator_type=v4-32", "--project=my-proj"]
V5E_HOST = ["--name=one", "--zone=us-west4-a", "--accelerator_type=v5litepod-8"]
V5P_QUEUED = [
    "--name=big",
    "--zone=us-east5-a",
    "--accelerator_type=v5p-32",
    "--spot",
    "--queued",
    "--valid_until_duration=6h",
]
JOB = ["--config=configs/cqa.py", "--workdir=gs://bkt/runs/cqa"]
TRAINING = ["--", "--config.model=t5_v1_1_xxl", "--config.eval_splits=('valid', 'test')"]


# ---------------------------------------------------------------------------------------------
# Dry runs: every command, exactly, and nothing run


def test_dry_run_of_a_v4_32_pod_slice_prints_each_gcloud_command_and_runs_none(cloud):
    create = cloud.launch("create", *V4_POD, "--spot", "--dry_run")
    assert _commands(create) == [
        "gcloud compute tpus tpu-vm create pod --zone=us-central2-b --project=my-proj "
        "--accelerator-type=v4-32 --version=tpu-ubuntu2204-base --spot"
    ]
    run = _commands(cloud.launch("run", *V4_POD, *JOB, "--dry_run", *TRAINING))
    tarball = os.path.join(tempfile.gettempdir(), "sbsd-jax-pod.tgz")
    assert run[0] == (
        f"tar -C {REPO} --exclude=.git --exclude=.venv --exclude=__pycache__ "
        f"--exclude=.pytest_cache --exclude=.ruff_cache --exclude=tpu_runs -czf {tarball} ."
    )
    assert run[1] == (
        f"gcloud compute tpus tpu-vm scp {tarball} pod:/tmp/sbsd-jax.tgz "
        "--zone=us-central2-b --project=my-proj --worker=all"
    )
    ssh = shlex.split(run[2])
    assert ssh[:8] == [
        "gcloud", "compute", "tpus", "tpu-vm", "ssh", "pod", "--zone=us-central2-b",
        "--project=my-proj",
    ]  # fmt: skip
    assert ssh[8] == "--worker=all" and len(ssh) == 10
    remote = ssh[9].removeprefix("--command=")
    # What each worker's shell runs: refresh the code, then the worker script with the
    # trainer's arguments intact (the worker's shell splits them back into these words).
    refresh, worker = remote.split(" && bash ~/sbsd-jax/launch/tpu_worker.sh ")
    assert refresh == (
        "mkdir -p ~/sbsd-jax && rm -rf ~/sbsd-jax/sbsd_jax ~/sbsd-jax/configs ~/sbsd-jax/launch "
        "&& tar -C ~/sbsd-jax -xzf /tmp/sbsd-jax.tgz"
    )
    assert shlex.split(worker) == [*JOB, *TRAINING[1:]]
    for step, expected in (
        ("delete", "gcloud compute tpus tpu-vm delete pod --zone=us-central2-b "
                   "--project=my-proj --quiet"),
        ("logs", "gcloud compute tpus tpu-vm ssh pod --zone=us-central2-b --project=my-proj "
                 "--worker=0 '--command=tail -n 100 -F ~/sbsd-jax-train.log'"),
        ("status", "gcloud compute tpus tpu-vm describe pod --zone=us-central2-b "
                   "--project=my-proj '--format=value(state)'"),
    ):  # fmt: skip
        assert _commands(cloud.launch(step, *V4_POD, "--dry_run")) == [expected]
    assert cloud.calls() == []  # nothing ran


def test_dry_run_of_a_single_v5e_host(cloud):
    assert _commands(cloud.launch("create", *V5E_HOST, "--dry_run")) == [
        "gcloud compute tpus tpu-vm create one --zone=us-west4-a "
        "--accelerator-type=v5litepod-8 --version=v2-alpha-tpuv5-lite"
    ]
    copy = cloud.launch("copy", *V5E_HOST, *JOB, "--dest=out", "--dry_run", "--",
                        "--config.export_hf_dir=hf/cqa")  # fmt: skip
    assert _commands(copy) == [
        "mkdir -p out/cqa",
        "gcloud storage rsync --recursive gs://bkt/runs/cqa out/cqa '--exclude=checkpoints/.*'",
        "gcloud compute tpus tpu-vm scp --recurse 'one:~/sbsd-jax/hf/cqa' out/cqa/ "
        "--zone=us-west4-a --worker=0",
    ]
    assert cloud.calls() == []


def test_dry_run_of_a_queued_spot_v5p_slice_and_its_watch(cloud):
    assert _commands(cloud.launch("create", *V5P_QUEUED, "--dry_run")) == [
        "gcloud compute tpus queued-resources create big --node-id=big --zone=us-east5-a "
        "--accelerator-type=v5p-32 --runtime-version=v2-alpha-tpuv5 "
        "--valid-until-duration=6h --spot"
    ]
    watch = cloud.launch("watch", *V5P_QUEUED, *JOB, "--dry_run", *TRAINING)
    lines = _commands(watch)
    assert lines[:4] == [
        "gcloud storage cat gs://bkt/runs/cqa/DONE",
        "gcloud compute tpus queued-resources describe big --zone=us-east5-a "
        "'--format=value(state.state)'",
        "gcloud compute tpus queued-resources delete big --zone=us-east5-a --force --quiet",
        "gcloud compute tpus queued-resources create big --node-id=big --zone=us-east5-a "
        "--accelerator-type=v5p-32 --runtime-version=v2-alpha-tpuv5 "
        "--valid-until-duration=6h --spot",
    ]
    assert lines[4].startswith("tar -C ")
    assert lines[5].startswith("gcloud compute tpus tpu-vm scp ")  # the node has the same name
    assert shlex.split(lines[6])[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "big"]
    assert len(lines) == 7
    assert "# 3. absent or FAILED/PREEMPTED/STOPPED/SUSPENDED/TERMINATED" in watch.stdout
    assert cloud.calls() == []


@pytest.mark.slow
def test_dry_run_commands_are_accepted_by_the_real_gcloud(tmp_path):
    """Where the Google Cloud CLI is installed: each dry-run command gets past gcloud's own
    argument parsing (with no account or project configured it then stops with exit status 1,
    'no active account' or 'Failed to find attribute [project]'; an unknown flag or a missing
    required one would be exit status 2)."""
    gcloud = shutil.which("gcloud")
    if gcloud is None:
        pytest.skip("the Google Cloud CLI is not installed")
    lines = []
    for args in (
        ["create", *V4_POD, "--spot"],
        ["create", *V5E_HOST],
        ["create", *V5P_QUEUED],
        ["watch", *V5P_QUEUED, "--project=p", *JOB, *TRAINING],
        ["watch", *V4_POD, *JOB, *TRAINING],
        ["logs", *V4_POD, "--all_workers"],
        ["copy", *V5E_HOST, "--project=p", *JOB, "--", "--config.export_hf_dir=hf"],
    ):
        result = _launch_dry(args)
        lines += [line for line in _commands(result) if line.startswith("gcloud ")]
    assert len(lines) == 18

    def shape(line: str) -> tuple:  # the command and the names of its flags
        words = shlex.split(line)
        return (*words[:5], *sorted(w.split("=")[0] for w in words if w.startswith("--")))

    distinct = list({shape(line): line for line in lines}.values())
    env = {**os.environ, "CLOUDSDK_CONFIG": str(tmp_path), "CLOUDSDK_CORE_DISABLE_PROMPTS": "1"}

    def parse(line: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            shlex.split(line), env=env, capture_output=True, text=True, timeout=120
        )

    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(parse, distinct))
    for line, result in zip(distinct, results, strict=True):
        assert result.returncode == 1 and "unrecognized arguments" not in result.stderr, (
            line,
            result.stderr,
        )


# ---------------------------------------------------------------------------------------------
# watch: preemption, re-creation, the same command again, and a finished run


@pytest.mark.parametrize("how", ["preempt", "gone"])
def test_watch_recreates_a_lost_slice_and_reruns_the_same_command_until_done(cloud, how):
    cloud.set_state(ssh_runs=[how, "finish"])
    result = cloud.launch("watch", *V4_POD, "--spot", *JOB, "--poll_seconds=0", *TRAINING)
    assert result.returncode == 0, result.stderr
    assert "1 of 1 runs finished" in result.stdout
    calls = cloud.calls()
    recreate = ["tpu-vm delete", "tpu-vm create"] if how == "preempt" else ["tpu-vm create"]
    assert _verbs(calls) == [
        "tpu-vm describe",  # absent
        "storage cat",
        "tpu-vm create",
        "tpu-vm describe",  # READY
        "storage cat",
        "tpu-vm scp",
        "tpu-vm ssh",  # training: the slice is taken away
        "tpu-vm describe",  # PREEMPTED, or absent
        "storage cat",
        *recreate,
        "tpu-vm describe",  # READY again
        "storage cat",
        "tpu-vm scp",
        "tpu-vm ssh",  # training again: finishes
        "tpu-vm describe",
        "storage cat",  # DONE: stop
    ]
    creates = [c for c in calls if c[2:4] == ["tpu-vm", "create"]]
    runs = [c for c in calls if c[2:4] == ["tpu-vm", "ssh"]]
    assert len(creates) == 2 and creates[0] == creates[1] and "--spot" in creates[0]
    assert len(runs) == 2 and runs[0] == runs[1]  # the same training command, resumed
    assert "--config.model=t5_v1_1_xxl" in runs[0][-1]
    assert cloud.state()["nodes"] == {"pod": ["READY"]}  # left up: no --delete_when_done


def test_watch_requeues_a_suspended_queued_resource(cloud):
    cloud.set_state(ssh_runs=["preempt", "finish"])
    result = cloud.launch(
        "watch", *V5P_QUEUED, *JOB, "--poll_seconds=0", "--delete_when_done", *TRAINING
    )
    assert result.returncode == 0, result.stderr
    verbs = _verbs(cloud.calls())
    assert verbs.count("queued-resources create") == 2
    assert verbs.count("queued-resources delete") == 2  # the suspended one, and at the end
    assert verbs.count("tpu-vm ssh") == 2
    # It waited in line (WAITING_FOR_RESOURCES) before each run.
    assert result.stderr.count("big: WAITING_FOR_RESOURCES; looking again in 0s") == 2
    assert cloud.state()["queued"] == {} and cloud.state()["nodes"] == {}


def test_a_finished_run_stops_watch_before_anything_is_created(cloud):
    cloud.set_state(objects={"gs://bkt/runs/cqa/DONE": '{"final_step": 100}'})
    result = cloud.launch("watch", *V4_POD, *JOB, "--poll_seconds=0")
    assert result.returncode == 0, result.stderr
    assert _verbs(cloud.calls()) == ["tpu-vm describe", "storage cat"]
    assert "finished: gs://bkt/runs/cqa (step 100)" in result.stderr


def test_a_done_marker_short_of_the_asked_steps_does_not_count(cloud):
    # An earlier, shorter run left DONE at step 100; this job asks for 200 steps.
    cloud.set_state(
        nodes={"pod": ["READY"]},
        objects={"gs://bkt/runs/cqa/DONE": '{"final_step": 100}'},
        ssh_runs=["finish"],
        final_step=200,
    )
    result = cloud.launch(
        "watch", *V4_POD, *JOB, "--poll_seconds=0", "--", "--config.num_train_steps=200"
    )
    assert result.returncode == 0, result.stderr
    assert _verbs(cloud.calls()).count("tpu-vm ssh") == 1


def test_watch_gives_up_when_training_keeps_failing_on_a_healthy_slice(cloud):
    cloud.set_state(nodes={"pod": ["READY"]}, ssh_runs=["fail", "fail", "fail"])
    result = cloud.launch("watch", *V4_POD, *JOB, "--poll_seconds=0", "--max_failures=2")
    assert result.returncode == 1
    assert "training failed 2 times in a row (exit status 1) while pod stayed READY" in (
        result.stderr
    )
    assert "Traceback" not in result.stderr
    assert _verbs(cloud.calls()).count("tpu-vm ssh") == 2


def test_watch_stops_after_max_creations(cloud):
    cloud.set_state(ssh_runs=["gone", "gone", "gone"])
    result = cloud.launch("watch", *V4_POD, *JOB, "--poll_seconds=0", "--max_creations=2")
    assert result.returncode == 1
    assert "pod was created 2 times (--max_creations) and the run is not finished" in (
        result.stderr
    )


def test_watch_asks_again_when_gcloud_fails_for_a_moment(cloud):
    cloud.set_state(nodes={"pod": ["READY"]}, ssh_runs=["finish"], errors=2)
    result = cloud.launch("watch", *V4_POD, *JOB, "--poll_seconds=0")
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("problem refreshing your current auth tokens") == 2
    assert _verbs(cloud.calls()).count("tpu-vm ssh") == 1


def test_watch_refuses_a_workdir_outside_the_bucket(cloud):
    result = cloud.launch("watch", *V4_POD, "--config=configs/cqa.py", "--workdir=/tmp/x")
    assert result.returncode == 1
    assert "watch needs a gs:// --workdir (got /tmp/x)" in result.stderr
    assert "Traceback" not in result.stderr


# ---------------------------------------------------------------------------------------------
# A sweep on TPU: one launch per cell of `sbsd_jax.experiments.sweep --dry_run`


def _sweep_commands(root: str) -> str:
    result = subprocess.run(
        [
            sys.executable, "-m", "sbsd_jax.experiments.sweep", "--config=configs/cqa.py",
            f"--workdir_root={root}", "--models=t5_v1_1_small", "--fractions=0.5,1.0",
            "--methods=standard,step_by_step", "--dry_run",
        ],
        cwd=REPO, capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    return result.stdout


def test_a_sweep_runs_each_cell_once_on_two_slices(cloud, tmp_path):
    sweep_file = tmp_path / "cells.txt"
    sweep_file.write_text(_sweep_commands("gs://bkt/sweep"))
    cloud.set_state(ssh_runs=["finish"] * 4)
    result = cloud.launch(
        "watch", "--name=sw", "--zone=us-central2-b", "--accelerator_type=v4-8", "--spot",
        f"--sweep_file={sweep_file}", "--slices=2", "--poll_seconds=0", "--delete_when_done",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "4 of 4 runs finished" in result.stdout
    runs = [c for c in cloud.calls() if c[2:4] == ["tpu-vm", "ssh"]]
    workdirs = sorted(w for run in runs for w in shlex.split(run[-1]) if w.startswith("--workdir="))
    assert workdirs == [
        f"--workdir=gs://bkt/sweep/t5_v1_1_small/frac_{f}/{m}"
        for f in ("0.5", "1")
        for m in ("standard", "step_by_step")
    ]
    assert cloud.state()["nodes"] == {}  # both slices deleted at the end
    creates = sorted(c[4] for c in cloud.calls() if c[2:4] == ["tpu-vm", "create"])
    assert creates == ["sw-0", "sw-1"]


def test_a_sweep_file_with_a_local_workdir_is_refused_naming_the_line(cloud, tmp_path):
    sweep_file = tmp_path / "cells.txt"
    sweep_file.write_text("# cells\n" + _sweep_commands("runs/sweep"))
    result = cloud.launch("watch", *V4_POD, f"--sweep_file={sweep_file}", "--dry_run")
    assert result.returncode == 2
    assert f"{sweep_file}:2: --workdir=runs/sweep/t5_v1_1_small/frac_0.5/standard is not gs://" in (
        result.stderr
    )


# ---------------------------------------------------------------------------------------------
# What the workers run: launch/tpu_worker.sh


def _worker_copy(tmp_path: pathlib.Path, exit_status: int) -> pathlib.Path:
    """The worker script in a stand-in repository whose .venv/bin/python records its
    arguments and exits with `exit_status`."""
    root = tmp_path / "repo"
    (root / "launch").mkdir(parents=True)
    shutil.copy(REPO / "launch" / "tpu_worker.sh", root / "launch")
    python = root / ".venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text(f'#!/bin/sh\nprintf "arg:%s\\n" "$@"\nexit {exit_status}\n')
    python.chmod(0o755)
    return root


def _run_worker(root: pathlib.Path, log: pathlib.Path, *args: str):
    return subprocess.run(
        ["bash", str(root / "launch" / "tpu_worker.sh"), *args],
        env={**os.environ, "SBSD_SKIP_INSTALL": "1", "SBSD_TRAIN_LOG": str(log)},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_worker_script_streams_and_logs_the_trainer_and_returns_its_status(tmp_path):
    root = _worker_copy(tmp_path, exit_status=3)
    log = tmp_path / "train.log"
    log.write_text("an earlier run's lines\n")
    args = ["--config=configs/cqa.py", "--workdir=gs://b/x y", "--config.eval_splits=('valid',)"]
    result = _run_worker(root, log, *args)
    assert result.returncode == 3
    expected = ["arg:-m", "arg:sbsd_jax.main", *(f"arg:{a}" for a in args)]
    assert result.stdout.splitlines() == expected  # this run's lines only
    assert log.read_text().splitlines()[-len(expected) :] == expected
    assert log.read_text().startswith("an earlier run's lines\n")
    assert not pathlib.Path(f"{log}.pid").exists()


def test_the_worker_script_stops_an_earlier_trainer_before_starting(tmp_path):
    root = _worker_copy(tmp_path, exit_status=0)
    log = tmp_path / "train.log"
    stopped = tmp_path / "stopped"
    # A trainer left behind by a dropped ssh session: it checkpoints (here: writes a file) on
    # SIGTERM and exits.
    earlier = subprocess.Popen(
        ["bash", "-c", f"trap 'echo term > {stopped}; exit 0' TERM; while :; do sleep 0.1; done",
         "sbsd_jax.main"]
    )  # fmt: skip
    try:
        pathlib.Path(f"{log}.pid").write_text(f"{earlier.pid}\n")
        result = _run_worker(root, log, "--config=c.py", "--workdir=gs://b/r")
        assert result.returncode == 0, result.stderr
        assert f"stopping the earlier trainer (pid {earlier.pid}) first" in result.stderr
        assert stopped.read_text() == "term\n"
        assert earlier.wait(timeout=10) == 0
    finally:
        if earlier.poll() is None:
            earlier.kill()


# ---------------------------------------------------------------------------------------------
# GPU: SLURM (a stand-in sbatch that runs the script as SLURM would) and one multi-GPU host

FAKE_SBATCH = r"""
import json, os, subprocess, sys
args = sys.argv[1:]
with open(os.environ["FAKE_SBATCH_CALLS"], "a") as calls:
    calls.write(json.dumps(args) + "\n")
options = {a.split("=", 1)[0]: a.split("=", 1)[-1] for a in args if a.startswith("--")}
script_at = next(i for i, a in enumerate(args) if not a.startswith("--"))
nodes = int(options["--nodes"])
env = {**os.environ, "SLURM_JOB_NODELIST": f"gpu[1-{nodes}]", "SLURM_JOB_NUM_NODES": str(nodes)}
subprocess.run(["bash", *args[script_at:]], cwd=options["--chdir"], env=env, check=True)
print("Submitted batch job 42")
"""

# srun: one task per node, each with its SLURM_PROCID; the command follows the options.
FAKE_SRUN = r"""#!/usr/bin/env bash
while [[ "$1" == --* ]]; do shift; done
for ((rank = 0; rank < SLURM_JOB_NUM_NODES; rank++)); do SLURM_PROCID=$rank "$@" || exit 1; done
"""

FAKE_SCONTROL = """#!/usr/bin/env bash
[ "$1 $2" = "show hostnames" ] && [ "$3" = "gpu[1-2]" ] && printf 'gpu1\\ngpu2\\n'
"""

RECORDING_PYTHON = """#!/usr/bin/env bash
echo "rank=$SBSD_PROCESS_ID of=$SBSD_NUM_PROCESSES at=$SBSD_COORDINATOR" >> "$FAKE_TRAINER_LOG"
printf 'arg:%s\\n' "$@" >> "$FAKE_TRAINER_LOG"
"""

SLURM_ARGS = [
    "slurm", "--nodes=2", "--gpus_per_node=4", "--partition=gpu", "--time=12:00:00",
    "--config=configs/cqa.py", "--workdir=/shared/runs/cqa",
]  # fmt: skip


def test_slurm_dry_run_prints_the_install_and_the_sbatch_command(cloud):
    result = cloud.launch(*SLURM_ARGS, "--dry_run", *TRAINING)
    assert _commands(result) == [
        f"bash {REPO}/launch/setup_env.sh",
        f"{REPO}/.venv/bin/pip install -q 'jax[cuda13]==0.10.2'",
        f"sbatch --job-name=sbsd-jax --nodes=2 --ntasks-per-node=1 --gpus-per-node=4 "
        f"--exclusive --chdir={REPO} --partition=gpu --time=12:00:00 "
        f"{REPO}/launch/slurm.sbatch configs/cqa.py /shared/runs/cqa "
        "--config.model=t5_v1_1_xxl '--config.eval_splits=('\"'\"'valid'\"'\"', "
        "'\"'\"'test'\"'\"')'",
    ]


def test_slurm_submits_one_task_per_node_with_the_coordinator_from_the_node_list(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in (
        ("sbatch", f"#!{sys.executable}\n{FAKE_SBATCH}"),
        ("srun", FAKE_SRUN),
        ("scontrol", FAKE_SCONTROL),
        ("python-recorder", RECORDING_PYTHON),
    ):
        (bin_dir / name).write_text(body)
        (bin_dir / name).chmod(0o755)
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "FAKE_SBATCH_CALLS": str(tmp_path / "sbatch_calls.jsonl"),
        "FAKE_TRAINER_LOG": str(tmp_path / "trainers.log"),
        "SBSD_PYTHON": str(bin_dir / "python-recorder"),
    }
    result = subprocess.run(
        [sys.executable, "-m", "sbsd_jax.cloud", *SLURM_ARGS, "--noinstall", *TRAINING],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "Submitted batch job 42" in result.stdout
    dry = _commands(_launch_dry([*SLURM_ARGS, *TRAINING]))[-1]
    [submitted] = [json.loads(line) for line in (tmp_path / "sbatch_calls.jsonl").open()]
    assert ["sbatch", *submitted] == shlex.split(dry)  # what the dry run printed
    args = [f"arg:{a}" for a in ("-m", "sbsd_jax.main", *JOB[:1], "--workdir=/shared/runs/cqa",
                                 *TRAINING[1:])]  # fmt: skip
    assert (tmp_path / "trainers.log").read_text().splitlines() == [
        "rank=0 of=2 at=gpu1:12355",
        *args,
        "rank=1 of=2 at=gpu1:12355",
        *args,
    ]


def test_gpu_host_dry_run_trains_one_process_on_the_chosen_gpus(cloud):
    result = cloud.launch(
        "gpu_host", *JOB[:1], "--workdir=/data/runs/cqa", "--gpus=0,1,2,3", "--noinstall",
        "--dry_run", "--", "--config.model=t5_v1_1_large",
    )  # fmt: skip
    assert _commands(result) == [
        f"CUDA_VISIBLE_DEVICES=0,1,2,3 {REPO}/.venv/bin/python -m sbsd_jax.main "
        "--config=configs/cqa.py --workdir=/data/runs/cqa --config.model=t5_v1_1_large"
    ]


# ---------------------------------------------------------------------------------------------
# Mistakes: one line, no traceback, nothing run


@pytest.mark.parametrize(
    "args, message",
    [
        (["create", "--zone=z", "--accelerator_type=v4-8"], "--name is required"),
        (["create", "--name=n", "--zone=z", "--accelerator_type=v4"], "expected e.g. v4-32"),
        (["create", "--name=n", "--zone=z", "--accelerator_type=v9-8"], "give --runtime_version"),
        (["create", *V4_POD, "--spot", "--preemptible"], "--spot and --preemptible exclude"),
        (["create", *V4_POD, "--", "--config.x=1"], "takes no training arguments"),
        (["run", *V4_POD, *JOB, "--", "--model=x"], "must be --config.field=value"),
        (["run", *V4_POD, "--workdir=gs://b/r"], "--config is required"),
        (["watch", *V4_POD, "--sweep_file=/nonexistent"], "--sweep_file: [Errno 2]"),
        (["launch"], "the first argument is the step: create, run, logs"),
    ],
)
def test_mistakes_are_one_line_errors(cloud, args, message):
    result = cloud.launch(*args)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr
    assert cloud.calls() == []


def test_the_launcher_and_the_trainer_agree_on_the_finished_marker():
    from sbsd_jax.cloud import job
    from sbsd_jax.train import loop

    assert job.FINISHED_MARKER == loop.FINISHED_MARKER


def test_the_package_does_not_load_the_trainer():
    code = textwrap.dedent(
        """
        import sys
        import sbsd_jax.cloud.watch, sbsd_jax.cloud.gpu, sbsd_jax.cloud.sweep_cells
        loaded = [m for m in sys.modules if m.split(".")[:2] in (["sbsd_jax", "train"],
                  ["sbsd_jax", "model"], ["sbsd_jax", "data"]) or m in ("jax", "tensorflow")]
        print(loaded)
        """
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                            text=True, check=True)  # fmt: skip
    assert result.stdout.strip() == "[]"
