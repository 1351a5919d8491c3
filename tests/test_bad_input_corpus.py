"""A corpus of the bad inputs a user meets, each through a real entry point.

Every refused case must: exit non-zero, say so in at most two lines on stderr without a
traceback, name the file and line and field (or the flag), and write nothing. Accepted
oddities (a byte-order mark, CRLF line ends, over-long inputs) must load exactly as the clean
file does, over-long inputs counted in the data report.

The data cases run `python -m sbsd_jax.data.inspect`'s main() in this process (it is pure
Python: no JAX, no TensorFlow) and one of them as a real subprocess; the trainer's cases run
`python -m sbsd_jax.main` in a subprocess, failing before anything is compiled.
"""

from __future__ import annotations

import codecs
import json
import os
import pathlib
import subprocess
import sys
from collections.abc import Callable

import pytest

from sbsd_jax.data import inspect
from sbsd_jax.data.examples import DatasetSpec
from sbsd_jax.data.sources import load_dataset_splits
from sbsd_jax.data.synthetic import SyntheticConfig, write_paper_layout
from sbsd_jax.experiments.config_files import ConfigFileError, load_config_file
from sbsd_jax.runtime.jax_platforms import only_cpu_can_exist

REPO = pathlib.Path(__file__).resolve().parents[1]
NUM_TRAIN, NUM_TEST, PER_FILE = 20, 6, 10
# A perfect teacher, so every example keeps its rationale and the counts below are exact.
SYNTHETIC = SyntheticConfig(
    num_train=NUM_TRAIN,
    num_test=NUM_TEST,
    completions_per_file=PER_FILE,
    wrong_answer_rate=0.0,
    unparseable_rate=0.0,
)


@pytest.fixture
def data_dir(tmp_path: pathlib.Path) -> pathlib.Path:
    """The paper layout: synthetic/synthetic_{train,test}.json + llm/{split}_CoT_{i}.json."""
    write_paper_layout(str(tmp_path / "data"), SYNTHETIC)
    return tmp_path / "data"


def train_file(data_dir: pathlib.Path) -> pathlib.Path:
    return data_dir / "synthetic" / "synthetic_train.json"


def cot_file(data_dir: pathlib.Path, index: int) -> pathlib.Path:
    return data_dir / "synthetic" / "llm" / f"train_CoT_{index}.json"


def edit_row(path: pathlib.Path, line: int, change: Callable[[dict], None]) -> None:
    """Apply `change` to the JSON object on 1-based `line` of a JSON-lines file."""
    lines = path.read_text(encoding="utf-8").splitlines()
    row = json.loads(lines[line - 1])
    change(row)
    lines[line - 1] = json.dumps(row)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def edit_completions(path: pathlib.Path, change: Callable[[list], None]) -> None:
    completions = json.loads(path.read_text(encoding="utf-8"))
    change(completions)
    path.write_text(json.dumps(completions), encoding="utf-8")


def snapshot(root: pathlib.Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def run_inspect(capsys, data_dir: pathlib.Path, *args: str) -> tuple[int, str, str]:
    argv = ["--dataset=synthetic", f"--data_dir={data_dir}", "--show=0", *args]
    status = inspect.main(argv)
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def assert_refused(status: int, err: str, *named: str) -> None:
    assert status != 0
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert 1 <= len(lines) <= 2, err
    for text in named:
        assert text in err, (text, err)


# ---------------------------------------------------------------------------------------------
# Data files: refused, with file, line and field


def _set(field: str, value: object) -> Callable[[dict], None]:
    return lambda row: row.__setitem__(field, value)


ROW_CASES = {
    # case: (line, change, words the message must hold besides the file and line)
    "empty input": (3, _set("input", ""), ("field 'input'", "empty text")),
    "blank label": (4, _set("label", "  "), ("field 'label'", "empty text")),
    "input a list": (2, _set("input", ["Tom has 3 pens."]), ("field 'input'", "got a list")),
    "input a number": (5, _set("input", 12), ("field 'input'", "got a number")),
    "input null": (6, _set("input", None), ("field 'input'", "got null")),
    "label a fraction": (7, _set("label", 3.5), ("field 'label'", "got a number")),
    "label a boolean": (8, _set("label", True), ("field 'label'", "got a boolean")),
    "label an object": (9, _set("label", {"value": "3"}), ("field 'label'", "got an object")),
    "input missing": (10, lambda row: row.pop("input"), ("field 'input'", "missing field")),
    "duplicate id": (
        11,
        _set("id", "synthetic-train-1"),
        ("field 'id'", "duplicate id 'synthetic-train-1' (first on line 2)"),
    ),
}


@pytest.mark.parametrize("case", sorted(ROW_CASES))
def test_a_bad_field_is_named_with_file_line_and_field(capsys, data_dir, case):
    line, change, words = ROW_CASES[case]
    edit_row(train_file(data_dir), line, change)
    status, out, err = run_inspect(capsys, data_dir)
    assert_refused(status, err, f"file {train_file(data_dir)}", f"line {line}", *words)
    assert out == ""


def test_a_whole_number_label_is_read_as_its_text(data_dir):
    """Not a bad type: a JSON number without a fraction means its decimal text."""
    first = json.loads(train_file(data_dir).read_text().splitlines()[0])
    edit_row(train_file(data_dir), 1, _set("label", int(first["label"])))
    loaded = load_dataset_splits(DatasetSpec(dataset="synthetic", data_dir=str(data_dir)))
    (example,) = [e for s in loaded.splits.values() for e in s if e.id == first["id"]]
    assert example.label == first["label"]


BYTE_CASES = {
    # case: (bytes for the file, line named, words)
    "invalid UTF-8": (
        lambda clean: clean.replace(b"has", b"h\xe4s", 1),  # Latin-1 a-umlaut, line 1
        1,
        ("not UTF-8 text", "byte 0xe4"),
    ),
    "UTF-16 file": (lambda clean: clean.decode().encode("utf-16"), 1, ("not UTF-8 text",)),
    "malformed JSON": (lambda clean: clean + b'{"input": "x", "label": \n', NUM_TRAIN + 1, ()),
    "not an object": (lambda clean: clean + b'["x", "1"]\n', NUM_TRAIN + 1, ("JSON object",)),
}


@pytest.mark.parametrize("case", sorted(BYTE_CASES))
def test_bytes_that_are_not_json_lines_are_named_with_the_line(capsys, data_dir, case):
    rewrite, line, words = BYTE_CASES[case]
    path = train_file(data_dir)
    path.write_bytes(rewrite(path.read_bytes()))
    status, _, err = run_inspect(capsys, data_dir)
    assert_refused(status, err, f"file {path}", f"line {line}", *words)


@pytest.mark.parametrize("content", [b"", b"\n\n  \n"], ids=["zero bytes", "blank lines"])
def test_an_empty_split_file_is_refused(capsys, data_dir, content):
    train_file(data_dir).write_bytes(content)
    status, _, err = run_inspect(capsys, data_dir)
    assert_refused(status, err, f"file {train_file(data_dir)}", "no examples")


# ---------------------------------------------------------------------------------------------
# Teacher files (llm/{split}_CoT_{i}.json): counts, encoding, shape


TEACHER_CASES = {
    "one completion short": (
        lambda d: edit_completions(cot_file(d, 1), lambda c: c.pop()),
        (f"{NUM_TRAIN - 1} teacher completions", f"{NUM_TRAIN} train examples", "train_CoT_1"),
    ),
    "one completion too many": (
        lambda d: edit_completions(cot_file(d, 1), lambda c: c.append("The answer is 3.")),
        (f"{NUM_TRAIN + 1} teacher completions", f"{NUM_TRAIN} train examples"),
    ),
    "a missing file in the numbering": (
        lambda d: os.rename(cot_file(d, 1), cot_file(d, 2)),
        ("numbered 0..1", "found [0, 2]"),
    ),
    "invalid UTF-8": (
        lambda d: cot_file(d, 0).write_bytes(cot_file(d, 0).read_bytes()[:-2] + b'\xff"]'),
        (f"file {'{cot0}'}", "line 1", "not UTF-8 text"),
    ),
    "not a list": (
        lambda d: cot_file(d, 0).write_text('{"completions": []}'),
        ("expected a JSON list of completions",),
    ),
    "a completion that is not text": (
        lambda d: edit_completions(cot_file(d, 0), lambda c: c.__setitem__(4, 7)),
        ("completion #4 is int",),
    ),
}


@pytest.mark.parametrize("case", sorted(TEACHER_CASES))
def test_bad_teacher_files_are_named(capsys, data_dir, case):
    break_it, words = TEACHER_CASES[case]
    break_it(data_dir)
    status, _, err = run_inspect(capsys, data_dir)
    named = [w.replace("{cot0}", str(cot_file(data_dir, 0))) for w in words]
    assert_refused(status, err, str(data_dir / "synthetic" / "llm"), *named)


# ---------------------------------------------------------------------------------------------
# Accepted as they are


def _reencode(path: pathlib.Path) -> None:
    """The same text with a UTF-8 byte-order mark and CRLF line ends (as Windows tools save)."""
    text = path.read_text(encoding="utf-8")
    path.write_bytes(codecs.BOM_UTF8 + text.replace("\n", "\r\n").encode("utf-8"))


def test_a_byte_order_mark_and_crlf_line_ends_load_exactly_as_the_clean_files(tmp_path, data_dir):
    clean_spec = DatasetSpec(dataset="synthetic", data_dir=str(data_dir))
    clean = load_dataset_splits(clean_spec)
    windows_dir = tmp_path / "windows"
    write_paper_layout(str(windows_dir), SYNTHETIC)
    folder = windows_dir / "synthetic"
    pretty = json.dumps(json.loads(cot_file(windows_dir, 0).read_text()), indent=1)
    cot_file(windows_dir, 0).write_text(pretty)  # several lines, so CRLF matters
    for path in [*folder.glob("*.json"), *(folder / "llm").glob("*.json")]:
        _reencode(path)
    assert train_file(windows_dir).read_bytes().startswith(codecs.BOM_UTF8)
    windows = load_dataset_splits(DatasetSpec(dataset="synthetic", data_dir=str(windows_dir)))
    assert windows.splits == clean.splits
    report, clean_report = windows.report.to_dict(), clean.report.to_dict()
    for split in ("train", "valid", "test"):
        report["splits"][split].pop("origin"), clean_report["splits"][split].pop("origin")
    assert report == clean_report


def test_inputs_longer_than_the_limit_are_counted_per_split_not_refused(capsys, data_dir):
    spec = DatasetSpec(dataset="synthetic", data_dir=str(data_dir))
    splits = load_dataset_splits(spec).splits
    # The limit every "predict: <input>" + EOS of the test split fits in but the longest one.
    longest = max(len(("predict: " + e.input).encode()) + 1 for e in splits["test"])
    expected = {
        split: sum(len(("predict: " + e.input).encode()) + 1 >= longest for e in examples)
        for split, examples in splits.items()
    }
    status, out, err = run_inspect(
        capsys, data_dir, f"--max_input_length={longest - 1}", "--max_target_length=1000", "--json"
    )
    assert status == 0 and err == ""
    counted = json.loads(out)
    assert counted["length_limits"] == [longest - 1, 1000, "byte"]
    for split, count in expected.items():
        assert counted["splits"][split]["truncated_inputs"] == count
        assert counted["splits"][split]["truncated_targets"] == 0
    assert counted["splits"]["test"]["truncated_inputs"] >= 1
    status, out, _ = run_inspect(capsys, data_dir, f"--max_input_length={longest - 1}")
    line = f"  test: {expected['test']} inputs over max_input_length={longest - 1} (byte tokens"
    assert line in out


def test_the_training_data_report_counts_truncated_rationales(data_dir):
    """What sbsd_jax.main prints at start: prepare_data's report, with the trainer's limits."""
    from sbsd_jax.data.examples import DataSpec
    from sbsd_jax.data.pipeline import prepare_data

    def data(max_target_length: int) -> DataSpec:
        dataset = DatasetSpec(dataset="synthetic", data_dir=str(data_dir))
        return DataSpec(dataset, "step_by_step", "byte", 512, max_target_length)

    loaded = load_dataset_splits(DatasetSpec(dataset="synthetic", data_dir=str(data_dir)))
    lengths = sorted(len(e.rationale.encode()) + 1 for e in loaded.splits["train"])  # + EOS
    limit = lengths[len(lengths) // 2]  # about half the rationales do not fit
    expected = sum(length > limit for length in lengths)
    assert 0 < expected < len(lengths)
    prepared = prepare_data(data(limit))
    train = prepared.report.splits["train"]
    assert (train.truncated_inputs, train.truncated_targets) == (0, expected)
    assert f"train: {expected} targets over max_target_length={limit}" in prepared.report.format()


# ---------------------------------------------------------------------------------------------
# Real processes: the inspect CLI and the trainer


def user_environment() -> dict[str, str]:
    """The test environment without the variables that hide library noise (conftest.py sets
    them), where that leaves the process on the CPU only, as a user's CPU-only machine is."""
    env = dict(os.environ)
    quiet = {"JAX_PLATFORMS": env.pop("JAX_PLATFORMS", None)}
    quiet["TF_CPP_MIN_LOG_LEVEL"] = env.pop("TF_CPP_MIN_LOG_LEVEL", None)
    if not only_cpu_can_exist(env):  # an accelerator host: keep the tests on the CPU
        env.update({k: v for k, v in quiet.items() if v is not None})
    return env


def run_module(module: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=REPO,
        env=user_environment(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_the_inspect_command_exits_non_zero_with_one_line(data_dir):
    edit_row(train_file(data_dir), 3, _set("input", ""))
    result = run_module("sbsd_jax.data.inspect", "--dataset=synthetic", f"--data_dir={data_dir}")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"python -m sbsd_jax.data.inspect: DataFormatError: file {train_file(data_dir)}, "
        "line 3, field 'input': empty text"
    ]
    assert result.stdout == ""


def demo_config(data_dir: pathlib.Path, workdir: pathlib.Path, *flags: str) -> list[str]:
    return [
        "--config=configs/demo_arithmetic.py",
        f"--config.data_dir={data_dir}",
        f"--workdir={workdir}",
        *flags,
    ]


def test_bad_data_stops_the_trainer_with_one_line_no_library_noise_and_an_untouched_workdir(
    tmp_path, data_dir
):
    """Also the console check of issue 13 part 6: on a CPU-only host, with neither
    JAX_PLATFORMS nor TF_CPP_MIN_LOG_LEVEL set, JAX's backend start (libtpu is installed) and
    TensorFlow's import print nothing: stderr is exactly our line."""
    path = train_file(data_dir)
    path.write_bytes(path.read_bytes().replace(b"has", b"h\xe4s", 1))
    workdir = tmp_path / "run"
    (workdir / "checkpoints" / "100").mkdir(parents=True)
    (workdir / "checkpoints" / "100" / "state").write_bytes(b"an earlier run's checkpoint")
    (workdir / "metrics.jsonl").write_text('{"step": 100, "train_loss": 1.5}\n')
    before = snapshot(workdir)
    result = run_module("sbsd_jax.main", *demo_config(data_dir, workdir), timeout=240)
    assert result.returncode == 1
    column = path.read_bytes().index(b"\xe4") + 1  # on line 1
    assert result.stderr.strip().splitlines() == [
        f"sbsd_jax.main: DataFormatError: file {path}, line 1: not UTF-8 text (byte 0xe4 at "
        f"byte {column} of the line); save the file as UTF-8"
    ], result.stderr
    assert snapshot(workdir) == before


FLAG_CASES = {
    # case: (flags, exit status, words the message must hold)
    "distributed mode": (
        ["--config.distributed.mode=bogus"],
        2,
        ("config.distributed.mode='bogus'", "choose one of auto, on, off"),
    ),
    "a word for a number": (["--config.batch_size=abc"], 1, ("--config.batch_size=abc",)),
    "an unknown field": (
        ["--config.batch_sise=8"],
        2,
        ("'batch_sise' in --config.batch_sise=8", "did you mean 'batch_size'"),
    ),
}


@pytest.mark.parametrize("case", sorted(FLAG_CASES))
def test_a_bad_flag_is_named_before_anything_starts(tmp_path, data_dir, case):
    flags, status, words = FLAG_CASES[case]
    workdir = tmp_path / "run"
    result = run_module("sbsd_jax.main", *demo_config(data_dir, workdir, *flags))
    assert_refused(result.returncode, result.stderr, *words)
    assert result.returncode == status
    assert not workdir.exists()


CONFIG_FILE_CASES = {
    # case: (the config file's text, None for no file or "folder" for a folder there; words of
    # the one line after 'PROGRAM: --config=F')
    "a syntax error": ("def get_config(:\n", ", line 1: invalid syntax"),
    "no get_config": ("def config():\n    pass\n", ": the file defines no get_config()"),
    "an error in its code": (
        "def get_config():\n    return undefined_name\n",
        ", line 2: NameError: name 'undefined_name' is not defined",
    ),
    "a missing file": (None, ": no such file"),
    "a folder": ("folder", ": a folder, not a config file"),
}
SIBLING_CONFIG = (  # a config that builds on a base.py next to it, as configs/cqa.py does
    "from sbsd_jax.experiments.config_files import load_sibling_config\n\n\n"
    "def get_config():\n    return load_sibling_config(__file__)\n"
)
CONFIG_PROGRAMS = {  # the programs that take --config, with the rest of their command line
    "sbsd_jax.main": lambda out: [f"--workdir={out}"],
    "sbsd_jax.experiments.sweep": lambda out: [f"--workdir_root={out}", "--dry_run"],
}


def config_file_case(folder: pathlib.Path, case: str) -> tuple[pathlib.Path, pathlib.Path]:
    """(the file to pass as --config, the file the error is in) for a CONFIG_FILE_CASES case,
    or for 'in a sibling: <case>', the same fault in the base.py a config file loads."""
    inner = case.removeprefix("in a sibling: ")
    text, _ = CONFIG_FILE_CASES[inner]
    faulty = folder / ("base.py" if inner != case else "my_config.py")
    if text == "folder":
        faulty.mkdir()
    elif text is not None:
        faulty.write_text(text)
    if inner == case:
        return faulty, faulty
    (folder / "my_config.py").write_text(SIBLING_CONFIG)
    return folder / "my_config.py", faulty


@pytest.mark.parametrize("program", sorted(CONFIG_PROGRAMS))
@pytest.mark.parametrize("case", [*sorted(CONFIG_FILE_CASES), "in a sibling: an error in its code"])
def test_a_config_file_that_does_not_load_is_named_with_its_line(tmp_path, case, program):
    config_file, faulty = config_file_case(tmp_path, case)
    words = CONFIG_FILE_CASES[case.removeprefix("in a sibling: ")][1]
    out = tmp_path / "run"
    result = run_module(program, f"--config={config_file}", *CONFIG_PROGRAMS[program](out))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"{program}: --config={faulty}{words}"]
    assert not out.exists()


@pytest.mark.parametrize("case", sorted(CONFIG_FILE_CASES))
def test_load_config_file_names_the_file_and_line_in_one_line(tmp_path, case):
    """The loader the sweep, the demo and sibling configs use: ConfigFileError, one line."""
    config_file, faulty = config_file_case(tmp_path, case)
    with pytest.raises(ConfigFileError) as error:
        load_config_file(config_file)
    assert str(error.value) == f"--config={faulty}{CONFIG_FILE_CASES[case][1]}"


@pytest.mark.parametrize("where", ["a file", "under a file"])
def test_a_workdir_that_cannot_be_a_folder_is_refused_before_anything_starts(
    tmp_path, data_dir, where
):
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine")
    workdir = a_file if where == "a file" else a_file / "run"
    result = run_module("sbsd_jax.main", *demo_config(data_dir, workdir))
    assert_refused(result.returncode, result.stderr, "sbsd_jax.main: --workdir: ", str(a_file))
    assert result.returncode == 2
    assert a_file.read_text() == "mine"


def test_an_export_folder_that_cannot_be_written_is_a_config_error(tmp_path, data_dir):
    from sbsd_jax.settings.validation import ConfigError, validate

    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine")
    config = static_config(data_dir, "export_hf_dir", str(a_file))
    config.export_which = "final"
    with pytest.raises(ConfigError) as refused:
        validate(config, None)
    assert list(refused.value.problems) == [
        f"config.export_hf_dir={str(a_file)!r}: {a_file} exists and is not a folder"
    ]


# ---------------------------------------------------------------------------------------------
# Every config group is checked before any side effect (no devices, no distributed start)

GROUP_CASES = {
    # case: (field, value, message)
    "mesh size 0": ("mesh.tensor", 0, "config.mesh.tensor=0: must be >= 1, or -1"),
    "mesh dcn_data -1": ("mesh.dcn_data", -1, "config.mesh.dcn_data=-1: must be >= 1"),
    "distributed mode": ("distributed.mode", "bogus", "config.distributed.mode='bogus'"),
    "distributed processes": (
        "distributed.num_processes",
        -2,
        "config.distributed.num_processes=-2: must be a whole number >= 0",
    ),
    "model_overrides": ("model_overrides.feed_forward", "swish", "config.model_overrides:"),
    "optimizer": ("adam_b2", 1.0, "config.adam_b2=1.0: must be in [0, 1)"),
    "evaluation": ("eval_max_examples", -5, "config.eval_max_examples=-5: must be >= 0"),
}


def static_config(data_dir: pathlib.Path, field: str, value: object):
    from sbsd_jax.experiments.config_files import load_config_file

    config = load_config_file(REPO / "configs" / "demo_arithmetic.py")
    config.data_dir = str(data_dir)
    *groups, name = field.split(".")
    target = config
    for group in groups:
        target = target[group]
    target[name] = value
    return config


def _checkpoint_folder(root: pathlib.Path, config_json: str | None, weights: bool) -> str:
    folder = root / "student"
    folder.mkdir()
    if config_json is not None:
        (folder / "config.json").write_text(config_json)
    if weights:
        (folder / "model.safetensors").write_bytes(b"")
    return str(folder)


def _a_file(root: pathlib.Path) -> str:
    (root / "student.bin").write_bytes(b"weights?")
    return str(root / "student.bin")


INIT_CHECKPOINT_CASES = {
    # case: (the value given a tmp folder, words of the one problem)
    "a folder that does not exist": (lambda root: str(root / "nowhere"), "no such checkpoint"),
    "a file": (lambda root: _a_file(root), "expected a checkpoint directory, got a file"),
    "no config.json": (lambda root: _checkpoint_folder(root, None, True), "missing config.json"),
    "config.json not JSON": (
        lambda root: _checkpoint_folder(root, "{", True),
        "config.json: invalid JSON",
    ),
    "config.json not an object": (
        lambda root: _checkpoint_folder(root, "[]", True),
        "config.json: not a JSON object",
    ),
    "no weights": (
        lambda root: _checkpoint_folder(root, "{}", False),
        "no model.safetensors, model.safetensors.index.json, pytorch_model.bin",
    ),
}


@pytest.mark.parametrize("case", sorted(INIT_CHECKPOINT_CASES))
def test_a_local_init_checkpoint_that_cannot_load_is_refused_before_the_run(
    tmp_path, data_dir, case
):
    from sbsd_jax.settings.validation import ConfigError, validate

    make_value, words = INIT_CHECKPOINT_CASES[case]
    value = make_value(tmp_path)
    with pytest.raises(ConfigError) as refused:
        validate(static_config(data_dir, "init_checkpoint", value), None)
    assert len(refused.value.problems) == 1, refused.value.problems
    assert refused.value.problems[0].startswith(f"config.init_checkpoint={value!r}: ")
    assert words in refused.value.problems[0]


def test_weights_that_fail_to_load_stop_the_run_in_one_line_and_leave_no_workdir(
    tmp_path, data_dir
):
    """Damaged weights pass the pre-run check (config.json is read, weights only at the
    start): the run stops at the load with one line, and the workdir it made goes again."""
    student = _checkpoint_folder(tmp_path, "{}", True)
    (pathlib.Path(student) / "model.safetensors").write_bytes(b"\x10\x00\x00\x00{not a header")
    workdir = tmp_path / "run"
    result = run_module(
        "sbsd_jax.main", *demo_config(data_dir, workdir, f"--config.init_checkpoint={student}")
    )
    assert_refused(result.returncode, result.stderr, "sbsd_jax.main: CheckpointError: ", student)
    assert result.returncode == 1
    assert not workdir.exists()


def test_a_hub_id_init_checkpoint_is_left_to_the_run_that_fetches_it(data_dir):
    from sbsd_jax.settings.validation import validate

    # Nothing is fetched while validating (no network then): the run fetches it at its start.
    validate(static_config(data_dir, "init_checkpoint", "someone/their-student"), None)


@pytest.mark.parametrize("case", sorted(GROUP_CASES))
def test_every_config_group_is_checked_without_devices(data_dir, case):
    from sbsd_jax.settings.validation import ConfigError, validate

    field, value, message = GROUP_CASES[case]
    with pytest.raises(ConfigError) as refused:
        validate(static_config(data_dir, field, value), None)
    assert len(refused.value.problems) == 1 and message in refused.value.problems[0]


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"SBSD_COORDINATOR": "10.0.0.2:1234"}, "needs the number of processes"),
        ({"SBSD_COORDINATOR": "h:1", "SBSD_NUM_PROCESSES": "two"}, "SBSD_NUM_PROCESSES='two'"),
        (
            {"SBSD_COORDINATOR": "h:1", "SBSD_NUM_PROCESSES": "2", "SBSD_PROCESS_ID": "2"},
            "process id 2 is not below the number of processes 2",
        ),
    ],
)
def test_a_coordinator_without_a_process_count_is_a_config_error(
    monkeypatch, data_dir, environ, message
):
    """What jax.distributed.initialize would otherwise fail on (or hang waiting for)."""
    from sbsd_jax.settings.validation import ConfigError, validate

    for variable, value in environ.items():
        monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError, match=message):
        validate(static_config(data_dir, "distributed.mode", "auto"), None)
