"""The teacher CLI against a real OpenAI-compatible server: `transformers serve` on 127.0.0.1.

The server (transformers[serving], pinned in requirements-test.txt) serves a tiny random Llama
that the test builds and saves locally (its byte-level tokenizer too): nothing is downloaded.
Both endpoints, the `max_completion_tokens` field, the check that refuses self-consistency from
a server that does not sample (this one ignores `temperature` and answers `n` with one choice),
and a SIGKILL mid-run followed by a rerun that finishes every example exactly once.
"""

from __future__ import annotations

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from sbsd_jax.teacher.client import CompletionResult, SamplingParams, Usage
from sbsd_jax.teacher.generation import (
    GenerationConfig,
    TeacherDoesNotSampleError,
    check_sampling,
)
from sbsd_jax.teacher.prompt_sets import load_prompt_set
from sbsd_jax.teacher.run_store import read_records

pytestmark = [pytest.mark.multiprocess, pytest.mark.slow]

NUM_EXAMPLES = 24
MAX_TOKENS = 6
SERVER_START_TIMEOUT_S = 180.0


def _save_tiny_llama(folder: pathlib.Path) -> None:
    """A 1-layer random Llama and a byte-level tokenizer (every byte a token, no merges)."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    vocab = {ch: i for i, ch in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    vocab["<s>"], vocab["</s>"] = len(vocab), len(vocab) + 1
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>")
    tokenizer.chat_template = (
        "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}assistant: {% endif %}"
    )
    tokenizer.save_pretrained(folder)
    config = LlamaConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=8192,
        bos_token_id=vocab["<s>"],
        eos_token_id=vocab["</s>"],
        pad_token_id=vocab["</s>"],
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Server:
    def __init__(self, model_dir: pathlib.Path, log: pathlib.Path) -> None:
        self.model = str(model_dir)
        self.port = _free_port()
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        executable = pathlib.Path(sys.executable).parent / "transformers"
        env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
        self.log = log
        self.process = subprocess.Popen(
            [str(executable), "serve", self.model, "--host", "127.0.0.1"]
            + ["--port", str(self.port), "--device", "cpu"],
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
            env=env,
        )
        self.started_in_s = self._wait_until_healthy()

    def _wait_until_healthy(self) -> float:
        start = time.monotonic()
        while time.monotonic() - start < SERVER_START_TIMEOUT_S:
            assert self.process.poll() is None, self.log.read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2):
                    return time.monotonic() - start
            except OSError:
                time.sleep(0.5)
        raise AssertionError(
            f"transformers serve did not answer within {SERVER_START_TIMEOUT_S}s: "
            + self.log.read_text()[-3000:]
        )

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    for module in ("fastapi", "uvicorn"):
        pytest.importorskip(module, reason="transformers serve needs transformers[serving]")
    root = tmp_path_factory.mktemp("real_server")
    _save_tiny_llama(root / "tiny-llama")
    running = Server(root / "tiny-llama", root / "serve.log")
    print(f"transformers serve answered after {running.started_in_s:.1f}s")
    yield running
    running.stop()


def _write_svamp(data_dir: pathlib.Path) -> None:
    folder = data_dir / "svamp"
    folder.mkdir(parents=True)
    rows = [
        {"input": f"What is {i} plus {i + 1}?", "label": f"( {i} + {i + 1} )"}
        for i in range(NUM_EXAMPLES)
    ]
    (folder / "svamp_train.json").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "svamp_test.json").write_text(json.dumps(rows[0]) + "\n")


def _teacher(data_dir: pathlib.Path, server: Server, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "sbsd_jax.teacher",
        "--dataset=svamp",
        "--split=train",
        f"--data_dir={data_dir}",
        f"--base_url={server.base_url}",
        f"--model={server.model}",
        "--shots=1",
        f"--max_tokens={MAX_TOKENS}",
        "--concurrency=2",
        "--noprogress",
        *extra,
    ]


def _run(command: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, timeout=600)


def _ok_records(data_dir: pathlib.Path) -> list[dict]:
    path = data_dir / "svamp" / "teacher" / "train" / "records.jsonl"
    if not path.exists():
        return []
    return [r for r in read_records(str(path)) if r["status"] == "ok"]


def _assert_every_example_once(data_dir: pathlib.Path) -> list[dict]:
    ok = _ok_records(data_dir)
    assert sorted(r["index"] for r in ok) == list(range(NUM_EXAMPLES))
    completions = json.loads((data_dir / "svamp" / "llm" / "train_CoT_0.json").read_text())
    assert len(completions) == NUM_EXAMPLES
    return ok


@pytest.mark.parametrize(
    "endpoint", [(), ("--chat", "--max_tokens_field=max_completion_tokens")], ids=str
)
def test_both_endpoints_label_every_example(server, tmp_path, endpoint):
    _write_svamp(tmp_path)
    result = _run(_teacher(tmp_path, server, *endpoint))
    assert result.returncode == 0, result.stderr[-3000:]
    ok = _assert_every_example_once(tmp_path)
    for record in ok:
        assert record["served_model"].startswith(server.model)
        # The random model never stops early: the length limit is what ended each completion,
        # so the server read it from the field it was sent in.
        assert 0 < record["usage"]["completion_tokens"] <= MAX_TOKENS
    assert "request failures this run: 0" in result.stdout
    assert "parse failures" in result.stdout  # a random model's text does not parse


def test_self_consistency_from_a_server_that_does_not_sample_is_refused(server, tmp_path):
    _write_svamp(tmp_path)
    sampling = ("--n_samples=3", "--temperature=0.7")
    refused = _run(_teacher(tmp_path, server, *sampling))
    assert refused.returncode == 2, refused.stderr[-3000:]
    assert "the server does not sample: 2/2 probe examples got 3 identical samples" in (
        refused.stderr
    )
    assert "fewer choices than n=3" in refused.stderr and "Traceback" not in refused.stderr
    assert _ok_records(tmp_path) == []  # refused before any example was asked

    allowed = _run(_teacher(tmp_path, server, *sampling, "--allow_non_sampling"))
    assert allowed.returncode == 0, allowed.stderr[-3000:]
    assert "WARNING: the server does not sample" in allowed.stderr
    assert f"WARNING: {NUM_EXAMPLES}/{NUM_EXAMPLES} examples got 3 identical samples" in (
        allowed.stdout
    )


def test_sigkill_mid_run_then_rerun_finishes_every_example_once(server, tmp_path):
    _write_svamp(tmp_path)
    records = tmp_path / "svamp" / "teacher" / "train" / "records.jsonl"
    process = subprocess.Popen(
        _teacher(tmp_path, server), stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 300
    while not records.exists() or records.read_bytes().count(b"\n") < 4:
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the teacher CLI made no progress"
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    done_before = len(_ok_records(tmp_path))
    assert 4 <= done_before < NUM_EXAMPLES

    rerun = _run(_teacher(tmp_path, server))
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"resuming: {done_before}/{NUM_EXAMPLES}" in rerun.stderr
    _assert_every_example_once(tmp_path)


class _Backend:
    """Answers the k-th prompt with answers[k] (the last one after that), and says whether a
    request came back with fewer choices than asked."""

    def __init__(self, *answers: tuple[str, ...], short: int = 0) -> None:
        self.answers, self.short, self.calls = answers, short, 0

    def complete(self, prompt, params) -> CompletionResult:
        texts = self.answers[min(self.calls, len(self.answers) - 1)]
        self.calls += 1
        return CompletionResult(
            texts=texts,
            finish_reasons=("stop",) * len(texts),
            usage=Usage(),
            requests=1 + self.short,
            attempts=1 + self.short,
            served_model=None,
            latency_s=0.0,
            short_responses=self.short,
        )


class _Example:
    def __init__(self, index: int) -> None:
        self.id, self.input, self.label = str(index), f"What is {index} plus 1?", "( 1 + 1 )"


def _check(backend: _Backend, tmp_path, **sampling) -> None:
    config = GenerationConfig(
        dataset="svamp", split="train", out_dir=str(tmp_path), model="m",
        sampling=SamplingParams(**sampling),
    )  # fmt: skip
    examples = [_Example(i) for i in range(5)]
    check_sampling(config, load_prompt_set("svamp", None), backend, examples, log=print)


def test_the_sampling_check_passes_a_server_whose_samples_differ_and_skips_greedy_runs(tmp_path):
    # One example with identical samples happens by chance; the other differs: no refusal.
    samples_differ = _Backend(("a", "a", "a"), ("a", "b", "a"))
    _check(samples_differ, tmp_path, n=3, temperature=0.7)
    assert samples_differ.calls == 2
    copies = _Backend(("a", "a", "a"))
    _check(copies, tmp_path, n=3, temperature=0.0)  # greedy: copies are expected
    _check(copies, tmp_path, n=1, temperature=0.7)  # one sample: nothing to compare
    assert copies.calls == 0
    with pytest.raises(TeacherDoesNotSampleError, match="fewer choices than n=3"):
        _check(_Backend(("a", "a", "a"), short=2), tmp_path, n=3, temperature=0.7)
