"""A teacher run against a scripted OpenAI-compatible server on 127.0.0.1: it writes the paper
layout the data reader loads, survives server faults without losing or duplicating an example,
votes over samples, filters by label, and refuses to mix runs."""

import json
import os
import threading

import pytest
from teacher_fake_server import FakeTeacherServer, Fault, svamp_like_answer

from sbsd_jax.data.examples import DatasetSpec, cqa_input
from sbsd_jax.data.paper_layout import load_paper_layout
from sbsd_jax.data.records import RawExample
from sbsd_jax.data.sources import load_dataset_splits
from sbsd_jax.teacher.client import (
    ClientConfig,
    OpenAICompatibleClient,
    RetryPolicy,
    SamplingParams,
)
from sbsd_jax.teacher.generation import (
    GenerationConfig,
    SampleParse,
    TeacherUnavailableError,
    export_layout,
    generate,
    majority_vote,
)
from sbsd_jax.teacher.prompt_sets import load_prompt_set
from sbsd_jax.teacher.run_store import RunLockedError, RunMismatchError, read_records, run_lock

FAST_RETRY = RetryPolicy(max_attempts=4, initial_backoff_s=0.01, max_backoff_s=0.05)


def svamp_examples(count):
    return [
        RawExample(f"svamp-train-{i}", f"What is {i} plus {i + 1}?", f"( {i}.0 + {i + 1}.0 )")
        for i in range(count)
    ]


def write_svamp_paper_layout(data_dir, examples):
    folder = os.path.join(data_dir, "svamp")
    os.makedirs(folder, exist_ok=True)
    for split, rows in (("train", examples), ("test", examples[:2])):
        with open(os.path.join(folder, f"svamp_{split}.json"), "w") as f:
            for example in rows:
                f.write(json.dumps({"input": example.input, "label": example.label}) + "\n")


def client_for(server, *, chat=False, timeout_s=2.0, model="fake-teacher"):
    return OpenAICompatibleClient(
        ClientConfig(server.base_url, model, chat=chat, timeout_s=timeout_s, retry=FAST_RETRY),
        seed=0,
    )


def run_config(out_dir, dataset="svamp", **overrides):
    defaults = dict(
        dataset=dataset,
        split="train",
        out_dir=str(out_dir),
        model="fake-teacher",
        concurrency=4,
        progress=False,
        chunk_size=4,
    )
    defaults.update(overrides)
    return GenerationConfig(**defaults)


def ok_records(out_dir, dataset="svamp", split="train"):
    path = os.path.join(out_dir, dataset, "teacher", split, "records.jsonl")
    return [r for r in read_records(path) if r["status"] == "ok"]


def cot_completions(out_dir, dataset="svamp", split="train"):
    folder = os.path.join(out_dir, dataset, "llm")
    names = sorted(
        (n for n in os.listdir(folder) if n.startswith(f"{split}_CoT_")),
        key=lambda n: int(n.split("_")[-1].split(".")[0]),
    )
    completions = []
    for name in names:
        with open(os.path.join(folder, name)) as f:
            completions.extend(json.load(f))
    return names, completions


def test_a_full_run_writes_the_paper_layout_that_the_trainer_reads(tmp_path):
    examples = svamp_examples(10)
    write_svamp_paper_layout(tmp_path, examples)
    prompt_set = load_prompt_set("svamp", shots=3)
    with FakeTeacherServer(svamp_like_answer, ignore_stop=True) as server:
        report = generate(run_config(tmp_path), examples, prompt_set, client_for(server))

    assert report.completed == 10 and report.missing == 0 and report.parse_failures == 0
    assert report.teacher_accuracy == 1.0
    assert report.prompt_tokens > 0 and report.completion_tokens > 0
    names, completions = cot_completions(tmp_path)
    assert names == ["train_CoT_0.json", "train_CoT_1.json", "train_CoT_2.json"]  # 4 a file
    # In example order, cut before the next few-shot question the server did not stop at.
    assert completions[3] == "We add 3 and 4. The answer is (3 + 4)."

    data = load_paper_layout("svamp", str(tmp_path))
    assert [t.rationale for t in data.teacher["train"]][:2] == [
        "We add 0 and 1.",
        "We add 1 and 2.",
    ]
    loaded = load_dataset_splits(DatasetSpec("svamp", data_dir=str(tmp_path)))
    assert loaded.report.splits["train"].parse_failures == 0
    train = loaded.splits["train"] + loaded.splits["valid"]
    assert sorted(e.rationale for e in train) == sorted(
        f"We add {i} and {i + 1}." for i in range(10)
    )

    # The prompt: the exemplars in the paper's format, then the example's question.
    prompts = {r.body["prompt"] for r in server.requests}
    assert len(prompts) == 10
    expected = (
        "".join(
            f"Q: {e.input}\nA: {e.rationale} The answer is {e.answer}.\n\n"
            for e in prompt_set.exemplars
        )
        + "Q: What is 7 plus 8?\nA:"
    )
    assert expected in prompts
    assert all(r.body["stop"] == ["\n\nQ:"] for r in server.requests)

    # Provenance on every record.
    record = next(r for r in ok_records(tmp_path) if r["index"] == 7)
    assert record["id"] == "svamp-train-7"
    assert record["teacher_model"] == "fake-teacher"
    assert record["prompt_hash"] == prompt_set.fingerprint()
    assert record["sampling"]["temperature"] == 0.0
    assert record["raw_completions"][0].startswith("We add 7 and 8. The answer is (7 + 8).\n\nQ:")
    assert (record["rationale"], record["llm_label"]) == ("We add 7 and 8.", "(7 + 8)")
    assert record["usage"]["completion_tokens"] > 0 and record["time"].endswith("+00:00")


def cqa_answer(question, sample):
    letter = "b"
    return (
        f"The answer must be the second choice. So the answer is ({letter}) second.\n\n"
        "Q: Next?\nAnswer Choices:\n(a) x"
    )


def test_chat_mode_run_writes_the_same_shape_of_completion(tmp_path):
    examples = [
        RawExample(f"q{i}", cqa_input(f"Question {i}?", ["first", "second"]), "second")
        for i in range(3)
    ]
    with FakeTeacherServer(lambda q, s: "A: " + cqa_answer(q, s)) as server:
        report = generate(
            run_config(tmp_path, "cqa", chat=True),
            examples,
            load_prompt_set("cqa", shots=2),
            client_for(server, chat=True),
        )
    assert report.teacher_accuracy == 1.0
    _, completions = cot_completions(tmp_path, "cqa")
    assert completions == ["The answer must be the second choice. So the answer is (b) second."] * 3
    messages = server.requests[0].body["messages"]
    assert messages[-1]["content"].startswith("Q: Question ")
    assert len(messages) == 1 + 2 * 2 + 1


def test_server_faults_are_retried_and_no_example_is_lost_or_doubled(tmp_path):
    examples = svamp_examples(12)
    with FakeTeacherServer(svamp_like_answer) as server:
        server.add_faults("What is 1 plus", Fault.status_code(500), Fault.status_code(503))
        server.add_faults("What is 2 plus", Fault.status_code(429, retry_after="0.05"))
        server.add_faults("What is 3 plus", Fault.hang(1.0))
        server.add_faults("What is 4 plus", Fault.truncate(), Fault.garbage())
        server.add_faults("What is 5 plus", Fault.disconnect())
        server.add_faults("What is 6 plus", Fault.empty())  # retried: answered the 2nd time
        server.add_faults("What is 7 plus", *[Fault.empty()] * 5)  # always empty: reported
        report = generate(
            run_config(tmp_path),
            examples,
            load_prompt_set("svamp"),
            client_for(server, timeout_s=0.3),
        )
    records = ok_records(tmp_path)
    assert sorted(r["index"] for r in records) == list(range(12))  # each exactly once
    assert report.completed == 12 and report.request_failures_this_run == 0
    assert report.parse_failures == 1
    assert report.parse_failure_reasons == {"empty completion": 1}
    assert report.teacher_accuracy == pytest.approx(11 / 12)
    by_index = {r["index"]: r for r in records}
    assert by_index[1]["attempts"] == 3 and by_index[6]["requests"] == 2
    assert by_index[7]["requests"] == 3  # first try + empty_completion_retries=2
    _, completions = cot_completions(tmp_path)
    assert len(completions) == 12 and completions[7] == ""
    assert completions[6] == "We add 6 and 7. The answer is (6 + 7)."


def test_a_request_that_keeps_failing_is_recorded_and_retried_by_the_next_run(tmp_path):
    examples = svamp_examples(6)
    with FakeTeacherServer(svamp_like_answer) as server:
        server.add_faults("What is 2 plus", *[Fault.status_code(500)] * 4)  # = max_attempts
        server.add_faults("What is 4 plus", Fault.status_code(400, message="prompt too long"))
        first = generate(
            run_config(tmp_path), examples, load_prompt_set("svamp"), client_for(server)
        )
        assert (first.completed, first.missing, first.request_failures_this_run) == (4, 2, 2)
        assert not os.path.exists(tmp_path / "svamp" / "llm")  # layout waits for every example
        errors = [
            r
            for r in read_records(str(tmp_path / "svamp/teacher/train/records.jsonl"))
            if r["status"] == "error"
        ]
        assert {r["index"] for r in errors} == {2, 4}
        assert any("prompt too long" in r["error"] for r in errors)

        asked_before = len(server.requests)
        second = generate(
            run_config(tmp_path), examples, load_prompt_set("svamp"), client_for(server)
        )
        assert sorted(r.question for r in server.requests[asked_before:]) == [
            "Q: What is 2 plus 3?\nA:",
            "Q: What is 4 plus 5?\nA:",
        ]
    assert (second.completed, second.missing, second.generated_this_run) == (6, 0, 2)
    assert sorted(r["index"] for r in ok_records(tmp_path)) == list(range(6))
    assert len(cot_completions(tmp_path)[1]) == 6


def test_a_server_that_cannot_be_reached_is_named_in_the_summary(tmp_path):
    with FakeTeacherServer(svamp_like_answer) as gone:
        client = client_for(gone)  # its port is closed once the server has stopped
    report = generate(run_config(tmp_path), svamp_examples(3), load_prompt_set("svamp"), client)
    assert (report.completed, report.missing, report.request_failures_this_run) == (0, 3, 3)
    last = report.summary().splitlines()[-1]
    assert last.startswith(f"  last request failure: {gone.base_url}")
    assert "gave up after" in last and "connection error" in last


def test_a_wrong_model_name_stops_the_run_at_once(tmp_path):
    with FakeTeacherServer(svamp_like_answer) as server:
        with pytest.raises(TeacherUnavailableError, match="404.*not found"):
            generate(
                run_config(tmp_path, model="typo-model", concurrency=1),
                svamp_examples(50),
                load_prompt_set("svamp"),
                client_for(server, model="typo-model"),
            )
        assert len(server.requests) <= 2


def test_self_consistency_keeps_a_rationale_that_agrees_with_the_majority(tmp_path):
    # Five samples per example: labels 7, 9, 9 (written as 4 + 5), 7, 9 -> majority 9.
    scripted = [
        "Three and four make seven. The answer is (3 + 4).",
        "Four and five make nine. The answer is (4 + 5).",
        "Five and four make nine. The answer is (5 + 4).",
        "Add them: seven. The answer is (3 + 4).",
        "Nine in total. The answer is (9).",
    ]
    examples = [RawExample("only", "What is 4 plus 5?", "( 4.0 + 5.0 )")]
    with FakeTeacherServer(lambda q, i: scripted[i]) as server:
        report = generate(
            run_config(tmp_path, sampling=SamplingParams(temperature=0.7, n=5)),
            examples,
            load_prompt_set("svamp"),
            client_for(server),
        )
    (record,) = ok_records(tmp_path)
    assert server.requests[0].body["n"] == 5
    assert record["votes"] == {"(3 + 4)": 2, "(4 + 5)": 3}
    assert record["chosen_sample"] == 1
    assert record["rationale"] == "Four and five make nine."
    assert record["completion"] == scripted[1]
    assert record["agreement"] == pytest.approx(0.6)
    assert report.majority_agreement == pytest.approx(0.6) and report.teacher_accuracy == 1.0
    assert cot_completions(tmp_path)[1] == [scripted[1]]


def test_majority_vote_ties_go_to_the_label_seen_first_and_unparsed_samples_do_not_vote():
    samples = [
        SampleParse(None, None, "no cue"),
        SampleParse("r1", "b", None),
        SampleParse("r2", "a", None),
        SampleParse("r3", "a", None),
        SampleParse("r4", "b", None),
    ]
    vote = majority_vote("cqa", samples)
    assert (vote.chosen, vote.votes) == (1, {"b": 2, "a": 2})
    assert majority_vote("cqa", [SampleParse(None, None, "x")] * 3).chosen == 0
    numbers = [
        SampleParse("r", "12", None),
        SampleParse("r", "12.0", None),
        SampleParse("r", "3", None),
    ]
    assert majority_vote("gsm8k", numbers).votes == {"12": 2, "3": 1}


def test_keep_only_correct_drops_rationales_whose_label_disagrees(tmp_path):
    def sometimes_wrong(question, sample):
        if "What is 2 plus" in question or "What is 5 plus" in question:
            return "I think it is ten. The answer is (5 + 5)."
        return svamp_like_answer(question, sample)

    examples = svamp_examples(8)
    write_svamp_paper_layout(tmp_path, examples)
    with FakeTeacherServer(sometimes_wrong) as server:
        report = generate(
            run_config(tmp_path, keep_only_correct=True),
            examples,
            load_prompt_set("svamp"),
            client_for(server),
        )
    assert report.teacher_correct == 6 and report.labelled == 8
    assert report.filtered_out == 2 and report.written_with_rationale == 6
    _, completions = cot_completions(tmp_path)
    assert completions[2] == completions[5] == "" and all(completions[i] for i in (0, 1, 3))
    teacher = load_paper_layout("svamp", str(tmp_path)).teacher["train"]
    assert [t.rationale is not None for t in teacher] == [
        True,
        True,
        False,
        True,
        True,
        False,
        True,
        True,
    ]
    # The trainer's loader drops them from train (drop_unparseable, the default).
    loaded = load_dataset_splits(DatasetSpec("svamp", data_dir=str(tmp_path)))
    train_ids = {e.id for e in loaded.splits["train"]}
    assert not train_ids & {"svamp-train-2", "svamp-train-5"}
    assert all(e.rationale.startswith("We add") for e in loaded.splits["train"])

    # Exporting again without the filter needs no teacher at all.
    export_layout(run_config(tmp_path), examples, load_prompt_set("svamp"))
    assert cot_completions(tmp_path)[1][2] == "I think it is ten. The answer is (5 + 5)."


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"prompt_set": load_prompt_set("svamp", shots=2)}, "prompt set hash"),
        ({"model": "another-teacher"}, "teacher model: 'fake-teacher' -> 'another-teacher'"),
        ({"sampling": SamplingParams(temperature=0.5)}, "sampling"),
        ({"chat": True}, "chat mode"),
        ({"examples": svamp_examples(5)}, "input examples"),
    ],
)
def test_a_changed_prompt_teacher_or_data_is_refused_unless_a_new_run_is_asked(
    tmp_path, change, message
):
    examples = svamp_examples(4)
    with FakeTeacherServer(svamp_like_answer) as server:
        generate(run_config(tmp_path), examples, load_prompt_set("svamp"), client_for(server))
        asked = len(server.requests)
        changed_config = {k: v for k, v in change.items() if k not in ("prompt_set", "examples")}
        prompt_set = change.get("prompt_set", load_prompt_set("svamp"))
        new_examples = change.get("examples", examples)
        with pytest.raises(RunMismatchError, match=message):
            generate(
                run_config(tmp_path, **changed_config), new_examples, prompt_set, client_for(server)
            )
        assert len(server.requests) == asked  # refused before asking anything

        server.model = changed_config.get("model", "fake-teacher")
        report = generate(
            run_config(tmp_path, new_run=True, **changed_config),
            new_examples,
            prompt_set,
            client_for(server, model=server.model, chat=changed_config.get("chat", False)),
        )
    assert report.generated_this_run == len(new_examples)
    archived = [n for n in os.listdir(tmp_path / "svamp" / "teacher") if ".previous-" in n]
    assert len(archived) == 1
    assert "records.jsonl" in os.listdir(tmp_path / "svamp" / "teacher" / archived[0])


def test_teacher_files_from_elsewhere_are_not_overwritten(tmp_path):
    llm = tmp_path / "svamp" / "llm"
    llm.mkdir(parents=True)
    (llm / "train_CoT_0.json").write_text(json.dumps(["authors' completion"]))
    with FakeTeacherServer(svamp_like_answer) as server:
        with pytest.raises(RunMismatchError, match="no run manifest"):
            generate(
                run_config(tmp_path),
                svamp_examples(1),
                load_prompt_set("svamp"),
                client_for(server),
            )
        assert not server.requests
    assert json.loads((llm / "train_CoT_0.json").read_text()) == ["authors' completion"]


def test_a_half_written_last_record_is_dropped_and_its_example_asked_again(tmp_path):
    examples = svamp_examples(5)
    with FakeTeacherServer(svamp_like_answer) as server:
        generate(
            run_config(tmp_path, limit=3, concurrency=1),
            examples,
            load_prompt_set("svamp"),
            client_for(server),
        )
        path = tmp_path / "svamp" / "teacher" / "train" / "records.jsonl"
        lines = path.read_text().splitlines(keepends=True)
        assert len(lines) == 3
        path.write_text("".join(lines[:2]) + lines[2][: len(lines[2]) // 2])  # killed mid-write
        report = generate(
            run_config(tmp_path), examples, load_prompt_set("svamp"), client_for(server)
        )
    assert report.generated_this_run == 3 and report.completed == 5
    assert sorted(r["index"] for r in ok_records(tmp_path)) == list(range(5))
    assert all(line.endswith("}\n") for line in path.read_text().splitlines(keepends=True))


def test_two_generators_cannot_write_the_same_split(tmp_path):
    config = run_config(tmp_path)
    with run_lock(config.paths):
        outcome = {}

        def second():
            try:
                generate(config, svamp_examples(1), load_prompt_set("svamp"), backend=object())
            except RunLockedError as error:
                outcome["error"] = error

        thread = threading.Thread(target=second)
        thread.start()
        thread.join(timeout=10)
    assert "another teacher run" in str(outcome["error"])


def test_nli_runs_stop_at_the_next_premise_and_read_the_label(tmp_path):
    from sbsd_jax.data.examples import nli_input

    def nli_answer(question, sample):
        return (
            "A cat is an animal and sleeping is resting. Answer: entailment\n\n"
            "Premise: A dog runs.\nHypothesis: An animal moves."
        )

    examples = [RawExample("e0", nli_input("A cat sleeps.", "An animal rests."), "entailment")]
    with FakeTeacherServer(nli_answer, ignore_stop=True) as server:
        report = generate(
            run_config(tmp_path, "esnli", sampling=SamplingParams(stop=("\n\nPremise",))),
            examples,
            load_prompt_set("esnli"),
            client_for(server),
        )
    (record,) = ok_records(tmp_path, "esnli")
    assert record["llm_label"] == "entailment" and report.teacher_accuracy == 1.0
    assert record["completion"] == (
        "A cat is an animal and sleeping is resting. Answer: entailment"
    )
    assert (
        server.requests[0]
        .body["prompt"]
        .endswith(
            "Premise: A cat sleeps.\nHypothesis: An animal rests.\nDoes the premise entail the "
            "hypothesis (entailment), contradict it (contradiction), or neither (neutral)?\nA:"
        )
    )


def test_a_teacher_that_fails_every_request_stops_the_run_after_a_few_examples(tmp_path):
    with FakeTeacherServer(svamp_like_answer) as server:
        server.add_faults("What is", *[Fault.status_code(503)] * 1000)
        with pytest.raises(TeacherUnavailableError, match="3 examples failed in a row.*503"):
            generate(
                run_config(tmp_path, concurrency=1, max_consecutive_failures=3),
                svamp_examples(40),
                load_prompt_set("svamp"),
                client_for(server),
            )
    records = read_records(str(tmp_path / "svamp/teacher/train/records.jsonl"))
    assert [r["status"] for r in records] == ["error"] * 3
    # 4 attempts each; the one worker may have started on a 4th example before the stop.
    assert 3 * 4 <= len(server.requests) <= 4 * 4
