"""`python -m sbsd_jax.teacher` as users run it: killed with SIGKILL (or stopped with Ctrl-C)
mid-run and started again, every example ends up in the output exactly once."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from teacher_fake_server import FakeTeacherServer, svamp_like_answer

from sbsd_jax.data.examples import DatasetSpec
from sbsd_jax.data.sources import load_dataset_splits
from sbsd_jax.teacher.run_store import read_records

pytestmark = pytest.mark.multiprocess

NUM_EXAMPLES = 60


def write_svamp(data_dir):
    folder = data_dir / "svamp"
    folder.mkdir(parents=True)
    rows = [
        {"input": f"What is {i} plus {i + 1}?", "label": f"( {i} + {i + 1} )"}
        for i in range(NUM_EXAMPLES)
    ]
    (folder / "svamp_train.json").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "svamp_test.json").write_text(json.dumps(rows[0]) + "\n")


def teacher_command(data_dir, server, *extra):
    return [
        sys.executable,
        "-m",
        "sbsd_jax.teacher",
        "--dataset=svamp",
        "--split=train",
        f"--data_dir={data_dir}",
        f"--base_url={server.base_url}",
        "--model=fake-teacher",
        "--concurrency=2",
        "--shots=2",
        "--chunk_size=25",
        "--noprogress",
        "--initial_backoff_s=0.01",
        *extra,
    ]


def records_path(data_dir):
    return data_dir / "svamp" / "teacher" / "train" / "records.jsonl"


def count_lines(path):
    return path.read_bytes().count(b"\n") if path.exists() else 0


def start_and_wait_for(command, path, lines, timeout_s=30.0):
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + timeout_s
    while count_lines(path) < lines:
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "generator made no progress"
        time.sleep(0.02)
    return process


def assert_every_example_exactly_once(data_dir):
    ok = [r for r in read_records(str(records_path(data_dir))) if r["status"] == "ok"]
    assert sorted(r["index"] for r in ok) == list(range(NUM_EXAMPLES))
    llm = data_dir / "svamp" / "llm"
    assert sorted(os.listdir(llm)) == ["train_CoT_0.json", "train_CoT_1.json", "train_CoT_2.json"]
    completions = []
    for i in range(3):
        completions += json.loads((llm / f"train_CoT_{i}.json").read_text())
    assert completions == [
        f"We add {i} and {i + 1}. The answer is ({i} + {i + 1})." for i in range(NUM_EXAMPLES)
    ]
    loaded = load_dataset_splits(DatasetSpec("svamp", data_dir=str(data_dir)))
    assert loaded.report.splits["train"].parse_failures == 0


def test_sigkill_mid_run_then_rerun_gives_every_example_exactly_once(tmp_path):
    write_svamp(tmp_path)
    with FakeTeacherServer(svamp_like_answer, delay_s=0.05) as server:
        command = teacher_command(tmp_path, server)
        process = start_and_wait_for(command, records_path(tmp_path), lines=12)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
        done_before = count_lines(records_path(tmp_path))
        assert 12 <= done_before < NUM_EXAMPLES
        assert not (tmp_path / "svamp" / "llm").exists()

        asked_before = len(server.requests)
        finished = subprocess.run(command, capture_output=True, text=True, timeout=60)
        assert finished.returncode == 0, finished.stderr
        assert f"resuming: {done_before}/{NUM_EXAMPLES}" in finished.stderr
        assert f"{NUM_EXAMPLES}/{NUM_EXAMPLES} examples done" in finished.stdout
        # Only the unfinished examples were asked again.
        assert len(server.requests) - asked_before == NUM_EXAMPLES - done_before
    assert_every_example_exactly_once(tmp_path)


def test_ctrl_c_keeps_finished_work_and_a_rerun_completes_it(tmp_path):
    write_svamp(tmp_path)
    with FakeTeacherServer(svamp_like_answer, delay_s=0.05) as server:
        command = teacher_command(tmp_path, server)
        process = start_and_wait_for(command, records_path(tmp_path), lines=8)
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=20)
        assert process.returncode == 130, stderr
        assert b"rerun the same command" in stderr
        finished = subprocess.run(command, capture_output=True, text=True, timeout=60)
        assert finished.returncode == 0, finished.stderr
    assert_every_example_exactly_once(tmp_path)


def test_the_command_refuses_to_resume_with_another_teacher(tmp_path):
    write_svamp(tmp_path)
    with FakeTeacherServer(svamp_like_answer) as server:
        first = subprocess.run(
            teacher_command(tmp_path, server, "--limit=3"),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert first.returncode == 3, first.stderr  # 57 examples still to do
        changed = [
            arg.replace("--model=fake-teacher", "--model=other")
            for arg in teacher_command(tmp_path, server)
        ]
        refused = subprocess.run(changed, capture_output=True, text=True, timeout=60)
        assert refused.returncode == 2
        assert "teacher model: 'fake-teacher' -> 'other'" in refused.stderr
        assert "--new_run" in refused.stderr
        shots = subprocess.run(
            teacher_command(tmp_path, server, "--shots=3"),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert shots.returncode == 2 and "prompt set hash" in shots.stderr
        assert len(server.requests) == 3


def test_a_missing_data_folder_or_split_is_one_line_and_exit_1(tmp_path):
    write_svamp(tmp_path)
    with FakeTeacherServer(svamp_like_answer) as server:
        missing_folder = subprocess.run(
            teacher_command(tmp_path / "nowhere", server), capture_output=True, text=True
        )
        command = [arg for arg in teacher_command(tmp_path, server) if arg != "--split=train"]
        missing_split = subprocess.run([*command, "--split=dev"], capture_output=True, text=True)
        assert server.requests == []
    assert missing_folder.returncode == 1 and missing_split.returncode == 1
    assert missing_folder.stderr.strip().splitlines() == [
        f"sbsd_jax.teacher: DataFormatError: file {tmp_path / 'nowhere' / 'svamp'}: "
        "no folder for dataset 'svamp'"
    ]
    assert missing_split.stderr.strip().splitlines() == [
        "sbsd_jax.teacher: split 'dev' not in the paper data (has: train, test); "
        "valid splits carved from train are labelled as part of train"
    ]
    assert not (tmp_path / "svamp" / "teacher").exists()
