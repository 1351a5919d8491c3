"""The train step on a data x fsdp x tensor mesh of 8 fake CPU devices computes what it computes
on one device: same losses, same parameters after a few steps (to float tolerance); gradient
accumulation equals the full-batch step; everything lives where the rules table says."""

from __future__ import annotations

import importlib.util
import pathlib

import jax
import ml_collections
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P
from rounding_noise import RoundingNoise

from sbsd_jax.data.features import TASK_LABEL, TASK_RATIONALE
from sbsd_jax.model.hf_checkpoint import params_from_state, state_from_params
from sbsd_jax.model.t5 import T5
from sbsd_jax.runtime.distributed import maybe_initialize_distributed
from sbsd_jax.settings import from_config
from sbsd_jax.settings.spec import MeshShapeError
from sbsd_jax.train import checkpointing, partitioning
from sbsd_jax.train import mesh as mesh_lib
from sbsd_jax.train import step as step_lib

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "configs"
INPUT_LENGTH, TARGET_LENGTH = 12, 8
STEPS = 3


def tiny_config(**mesh: int) -> ml_collections.ConfigDict:
    spec = importlib.util.spec_from_file_location("base_config", CONFIGS / "base.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    config.model = "t5_v1_1_tiny"
    # One layer per stack and a small vocabulary keep XLA's CPU compile short; no dropout,
    # whose threefry bits make up most of the compile time (same masks on any mesh anyway).
    config.model_overrides = ml_collections.ConfigDict(
        {"dropout_rate": 0.0, "vocab_size": 512, "num_encoder_layers": 1, "num_decoder_layers": 1}
    )
    config.batch_size = 4  # examples; step_by_step -> 8 rows (4 predict + 4 explain)
    config.eval_batch_size = 8
    config.max_input_length, config.max_target_length = INPUT_LENGTH, TARGET_LENGTH
    config.learning_rate = 3e-3  # large enough that parameters visibly move in 3 steps
    config.lr_schedule = "constant"
    config.compute_dtype = "float32"
    config.mesh.update(mesh)
    return config


def make_mesh(config: ml_collections.ConfigDict, devices):
    return mesh_lib.make_mesh(from_config.mesh_spec(config), devices)


def build_program(config: ml_collections.ConfigDict, devices) -> step_lib.TrainProgram:
    spec = from_config.to_run_spec(config)
    mesh = make_mesh(config, devices)
    return step_lib.build_train_program(
        spec.model, spec.optimizer, spec.step, mesh, spec.mesh.rules
    )


def make_batch(seed: int, rows: int = 8) -> dict[str, np.ndarray]:
    """Half label rows, half rationale rows, of different lengths; the last row packs two
    rationale segments (segment ids 1 and 2, positions restarting at 0)."""
    rng = np.random.default_rng(seed)
    batch = {
        key: np.zeros((rows, length), np.int32)
        for key, length in (
            ("encoder_input_tokens", INPUT_LENGTH),
            ("encoder_segment_ids", INPUT_LENGTH),
            ("encoder_positions", INPUT_LENGTH),
            ("decoder_input_tokens", TARGET_LENGTH),
            ("decoder_target_tokens", TARGET_LENGTH),
            ("decoder_segment_ids", TARGET_LENGTH),
            ("decoder_positions", TARGET_LENGTH),
            ("decoder_task_ids", TARGET_LENGTH),
        )
    }
    batch["decoder_loss_weights"] = np.zeros((rows, TARGET_LENGTH), np.float32)

    def put(
        row: int, segment: int, start: int, in_len: int, in_start: int, tgt_len: int, task: int
    ) -> None:
        source = slice(in_start, in_start + in_len)
        batch["encoder_input_tokens"][row, source] = rng.integers(2, 300, in_len)
        batch["encoder_segment_ids"][row, source] = segment
        batch["encoder_positions"][row, source] = np.arange(in_len)
        target = rng.integers(2, 300, tgt_len)
        target[-1] = 1  # EOS
        span = slice(start, start + tgt_len)
        batch["decoder_target_tokens"][row, span] = target
        batch["decoder_input_tokens"][row, span] = np.concatenate([[0], target[:-1]])
        batch["decoder_segment_ids"][row, span] = segment
        batch["decoder_positions"][row, span] = np.arange(tgt_len)
        batch["decoder_loss_weights"][row, span] = 1.0
        batch["decoder_task_ids"][row, span] = task

    for row in range(rows - 1):
        task = TASK_LABEL if row < rows // 2 else TASK_RATIONALE
        put(row, 1, 0, 4 + row % 7, 0, 2 + row % 6, task)
    put(rows - 1, 1, 0, 5, 0, 3, TASK_RATIONALE)
    put(rows - 1, 2, 3, 6, 5, 4, TASK_RATIONALE)
    return batch


def train(program: step_lib.TrainProgram, transform=lambda batch: batch, steps: int = STEPS):
    """STEPS steps from the seed's initialisation on make_batch(0..), each `transform`ed."""
    state = program.init_fn(jax.random.key(tiny_config().seed))
    losses = []
    for i in range(steps):
        batch = partitioning.host_local_to_global(transform(make_batch(i)), program.mesh)
        state, metrics = program.train_step(state, batch)
        losses.append(jax.device_get(metrics))
    return state, losses


def run_steps(config: ml_collections.ConfigDict, devices, steps: int = STEPS):
    program = build_program(config, devices)
    return (program, *train(program, steps=steps))


@pytest.fixture(scope="module")
def one_device_run():
    return run_steps(tiny_config(data=1, fsdp=1, tensor=1), jax.devices()[:1])


@pytest.fixture(scope="module")
def rounding_noise(one_device_run) -> RoundingNoise:
    """How far reordering the batch rows moves the one-device run (see rounding_noise.py)."""
    program, state, losses = one_device_run

    def train_params(transform):
        reordered_state, reordered_losses = train(program, transform)
        return reordered_state.params, reordered_losses

    return RoundingNoise.measure(train_params, (state.params, losses))


@pytest.fixture(scope="module")
def mesh_2x2x2_run():
    assert len(jax.devices()) == 8, "conftest provides 8 fake CPU devices"
    return run_steps(tiny_config(data=2, fsdp=2, tensor=2), jax.devices())


def test_data_fsdp_tensor_mesh_gives_the_same_losses_and_params_as_one_device(
    one_device_run, mesh_2x2x2_run, rounding_noise
):
    """Same within ROUNDING_MARGIN x the distance that reordering the batch rows puts between
    two one-device runs (rounding_noise.py): the mesh sums partial gradients over 4 batch
    shards and splits the MLP and attention contractions over 2 tensor shards, so it rounds
    differently, and 3 Adam steps amplify that for near-zero gradients (2.0e-5 on AMD Zen 4,
    5.4e-5 on an Intel Xeon; a fixed atol of 2e-5 failed there). A sharding bug (a lost or
    duplicated row, a gradient reduced over one shard only) moves weights by ~1e-2: thousands
    of times the noise."""
    _, single_state, single_metrics = one_device_run
    _, sharded_state, sharded_metrics = mesh_2x2x2_run
    rounding_noise.assert_same_metrics(
        sharded_metrics, single_metrics, ("loss", "label_loss", "rationale_loss", "grad_norm")
    )
    for single, sharded in zip(single_metrics, sharded_metrics, strict=True):
        assert sharded["label_tokens"] == single["label_tokens"]
    assert int(sharded_state.step) == int(single_state.step) == STEPS
    rounding_noise.assert_same_params(sharded_state.params, single_state.params)
    # The parameters did move, so the comparison is not between two initialisations.
    first, last = single_metrics[0]["loss"], single_metrics[-1]["loss"]
    assert last < first


def test_each_task_is_counted_over_its_own_tokens(mesh_2x2x2_run):
    _, _, metrics = mesh_2x2x2_run
    batch = make_batch(0)
    weights, tasks = batch["decoder_loss_weights"], batch["decoder_task_ids"]
    assert metrics[0]["label_tokens"] == weights[tasks == TASK_LABEL].sum()
    assert metrics[0]["rationale_tokens"] == weights[tasks == TASK_RATIONALE].sum()
    np.testing.assert_allclose(
        metrics[0]["loss"],
        0.5 * metrics[0]["label_loss"] + 0.5 * metrics[0]["rationale_loss"],
        rtol=1e-6,
    )


def test_params_optimizer_state_and_batch_are_placed_by_the_rules(mesh_2x2x2_run):
    program, state, _ = mesh_2x2x2_run
    mlp_in = state.params["encoder"]["layers"][0]["mlp"]["wi_0"]
    assert mlp_in.get_value().sharding.spec == P("fsdp", "tensor")  # ('embed', 'mlp')
    # 64 x 96 split 2 ways on each axis, replicated over 'data'.
    assert mlp_in.get_value().addressable_shards[0].data.shape == (32, 48)
    adam_mu = state.opt_state[1][0].mu["encoder"]["layers"][0]["mlp"]["wi_0"]
    assert adam_mu.get_value().sharding.spec == P("fsdp", "tensor")  # mirrors its parameter
    assert state.step.sharding.spec == P()
    batch = partitioning.host_local_to_global(make_batch(0), program.mesh)
    tokens = batch["encoder_input_tokens"]
    assert tokens.sharding.spec == P(("data", "fsdp"))
    assert tokens.addressable_shards[0].data.shape == (2, INPUT_LENGTH)  # 8 rows / (2*2)


def test_gradient_accumulation_equals_the_full_batch_step(mesh_2x2x2_run, rounding_noise):
    """Two micro-batches of rows i % 2 add the same terms in another order: the same within
    ROUNDING_MARGIN x the row-reordering noise, token counts exactly."""
    config = tiny_config(data=2, fsdp=2, tensor=2)
    config.grad_accum_steps = 2  # (micro-batches would draw their own dropout masks: none here)
    _, full_state, full_metrics = mesh_2x2x2_run
    _, accum_state, accum_metrics = run_steps(config, jax.devices())
    rounding_noise.assert_same_metrics(
        accum_metrics, full_metrics, ("loss", "label_loss", "rationale_loss", "grad_norm")
    )
    for full, accumulated in zip(full_metrics, accum_metrics, strict=True):
        assert accumulated["label_tokens"] == full["label_tokens"]
        assert accumulated["rationale_tokens"] == full["rationale_tokens"]
    rounding_noise.assert_same_params(accum_state.params, full_state.params)


def test_mesh_axes_fill_the_devices():
    config = tiny_config(data=2, fsdp=-1, tensor=2)
    assert from_config.mesh_spec(config).shape(8) == (2, 2, 2)
    assert dict(make_mesh(tiny_config(fsdp=-1), jax.devices()).shape) == {
        "data": 1,
        "fsdp": 8,
        "tensor": 1,
    }
    with pytest.raises(MeshShapeError, match="16 devices but only 8"):
        from_config.mesh_spec(tiny_config(data=4, fsdp=4, tensor=1)).shape(8)


def test_adafactor_factored_moments_are_replicated_and_full_moments_follow_their_param():
    """Shardings come from eval_shape alone (nothing allocated): an XXL state can be planned."""
    config = tiny_config(data=2, fsdp=2, tensor=2)
    config.optimizer = "adafactor"
    config.model_overrides.update(d_model=128, d_ff=256)  # >= 128 on both sides: factored
    program = build_program(config, jax.devices())
    shapes = program.abstract_state.opt_state[1][0]  # (clip, adafactor)[0]: FactoredState
    shardings = program.state_shardings.opt_state[1][0]

    def at(tree, *path):
        for key in path:
            tree = tree[key]
        return tree.get_value()

    mlp = ("encoder", "layers", 0, "mlp", "wi_0")  # (embed 128, mlp 256)
    norm = ("encoder", "final_norm", "scale")  # (embed 128,): too small to factor
    assert at(program.state_shardings.params, *mlp).spec == P("fsdp", "tensor")
    assert at(shapes.v_row, *mlp).shape == (128,) and at(shapes.v_col, *mlp).shape == (256,)
    assert at(shardings.v_row, *mlp).spec == P() and at(shardings.v_col, *mlp).spec == P()
    assert at(shapes.v, *norm).shape == (128,)
    assert at(shardings.v, *norm).spec == P("fsdp")  # an unfactored moment mirrors its param
    assert program.state_shardings.step.spec == P()


@pytest.mark.slow
def test_scanned_layers_train_like_unscanned_layers_with_adafactor(tmp_path):
    """scan_layers stacks each layer kind into one [layers, ...] array; Adafactor's block-RMS
    clipping, parameter scale and second moments treat that axis as a batch axis (T5X), so the
    scanned run follows the unscanned one step for step (within ROUNDING_MARGIN x the noise of
    the unscanned run on reordered rows: the stacked layout sums in another order). The first
    layer of each stack starts at a tenth of the scale, so statistics mixed across layers would
    show (a factor ~10 on an update, far beyond rounding). The scanned state is sharded by the
    rules and survives a checkpoint."""
    programs = {}
    for scan in (False, True):
        config = tiny_config(data=2, fsdp=2, tensor=2)
        config.optimizer, config.weight_decay, config.scan_layers = "adafactor", 1e-3, scan
        config.model_overrides.update(  # d_model, d_ff >= 128: MLP kernels factored
            num_encoder_layers=2, num_decoder_layers=2, d_model=128, d_ff=256
        )
        programs[scan] = build_program(config, jax.devices())
    plain, scanned = programs[False], programs[True]
    # Eager init (cheaper than compiling init_fn), then the same values in both layouts.
    start = params_from_state(T5(plain.model_config, rngs=nnx.Rngs(0)), plain.model_config)
    start = {  # path: ('encoder' | 'decoder', 'layers', index, ...)
        path: value * 0.1 if path[1:3] == ("layers", 0) and value.ndim > 1 else value
        for path, value in start.items()
    }

    def train_from_start(program, transform=lambda batch: batch):
        state = program.init_from_params_fn(state_from_params(start, program.model_config))
        history = []
        for i in range(STEPS):
            batch = partitioning.host_local_to_global(transform(make_batch(i)), program.mesh)
            state, metrics = program.train_step(state, batch)
            history.append(jax.device_get(metrics))
        return state, history

    plain_state, plain_history = train_from_start(plain)
    scanned_state, scanned_history = train_from_start(scanned)
    plain_params = params_from_state(plain_state.params, plain.model_config)
    scanned_params = params_from_state(scanned_state.params, scanned.model_config)
    assert plain_params.keys() == scanned_params.keys()

    def reordered(transform):  # the unscanned program on reordered rows: rounding noise alone
        state, history = train_from_start(plain, transform)
        return params_from_state(state.params, plain.model_config), history

    noise = RoundingNoise.measure(reordered, (plain_params, plain_history))
    noise.assert_same_metrics(scanned_history, plain_history, ("loss", "grad_norm"))
    noise.assert_same_params(scanned_params, plain_params)
    for path, value in plain_params.items():
        assert not np.allclose(value, start[path], rtol=1e-3, atol=0), path  # it did move

    # A stacked norm scale's full second moment is [layers, embed], sharded like the scale; the
    # factored moments of a stacked [layers, 128, 256] kernel are per layer and replicated.
    factored = scanned_state.opt_state[1][0]  # (clip, adafactor)[0]: FactoredState

    def at(tree, *path):
        for key in ("encoder", "layers", *path):
            tree = tree[key]
        return tree.get_value()

    assert at(factored.v, "mlp_norm", "scale").shape == (2, 128)
    assert at(factored.v, "mlp_norm", "scale").sharding.spec == P(None, "fsdp")
    assert at(factored.v_row, "mlp", "wi_0").shape == (2, 128)
    assert at(factored.v_col, "mlp", "wi_0").shape == (2, 256)
    assert at(factored.v_col, "mlp", "wi_0").sharding.spec == P()
    policy = checkpointing.CheckpointPolicy(async_save=False)
    with checkpointing.Checkpointer(tmp_path, policy) as checkpointer:
        checkpointer.save(STEPS, scanned_state, {})
        restored = checkpointer.restore(STEPS, scanned.abstract_state_with_shardings).state
    jax.tree.map(
        lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
        restored,
        scanned_state,
    )
    restored_v = restored.opt_state[1][0].v["encoder"]["layers"]["mlp_norm"]["scale"]
    assert restored_v.get_value().sharding.spec == P(None, "fsdp")


def test_a_single_process_needs_no_distributed_initialisation(monkeypatch):
    for name in (
        "SBSD_COORDINATOR",
        "TPU_WORKER_HOSTNAMES",
        "MEGASCALE_COORDINATOR_ADDRESS",
        "SLURM_NTASKS",
        "OMPI_COMM_WORLD_SIZE",
    ):
        monkeypatch.delenv(name, raising=False)
    assert maybe_initialize_distributed(from_config.distributed_spec(tiny_config())) is False
    config = tiny_config()
    config.distributed.coordinator_address = "10.0.0.1:1234"
    with pytest.raises(ValueError, match="needs the number of processes"):
        maybe_initialize_distributed(from_config.distributed_spec(config))


# -- Which batch rows each process loads ------------------------------------------------------
# One process cannot fake several, so "this process" is a device subset of the 8 fake devices:
# the processes of a real job are the groups of consecutive devices (make_mesh's order).


def batch_sharding_on(**mesh: int):
    return partitioning.batch_sharding(make_mesh(tiny_config(**mesh), jax.devices()))


def rows_of_processes(sharding, num_rows: int, num_processes: int) -> list[tuple[int, int]]:
    per_process = len(jax.devices()) // num_processes
    groups = [jax.devices()[p * per_process : (p + 1) * per_process] for p in range(num_processes)]
    rows = [partitioning.process_batch_rows(sharding, num_rows, group) for group in groups]
    for r in rows:  # these meshes give every process adjacent rows
        assert r.tolist() == list(range(r[0], r[-1] + 1))
    return [(int(r[0]), int(r[-1]) + 1) for r in rows]


@pytest.mark.parametrize(
    ("mesh", "num_processes", "expected"),
    [
        ({"data": 2, "fsdp": 4, "tensor": 1}, 1, [(0, 16)]),
        ({"data": 2, "fsdp": 4, "tensor": 1}, 2, [(0, 8), (8, 16)]),
        ({"data": 1, "fsdp": 8, "tensor": 1}, 4, [(0, 4), (4, 8), (8, 12), (12, 16)]),
        ({"data": 2, "fsdp": 2, "tensor": 2}, 4, [(0, 4), (4, 8), (8, 12), (12, 16)]),
    ],
)
def test_batch_split_over_every_process_gives_each_its_even_contiguous_share(
    mesh, num_processes, expected
):
    sharding = batch_sharding_on(**mesh)
    assert rows_of_processes(sharding, 16, num_processes) == expected
    whole = partitioning.process_batch_rows(sharding, 16)  # this (single) process: everything
    assert whole.tolist() == list(range(16))


@pytest.mark.parametrize(
    ("mesh", "num_processes", "expected"),
    [
        # tensor=8 over 2 processes of 4 devices: the batch is not split, both load all rows.
        ({"data": 1, "fsdp": 1, "tensor": 8}, 2, [(0, 16), (0, 16)]),
        # tensor=4 spans 2 of 4 processes (2 devices each): 2 row groups of 2 processes.
        ({"data": 2, "fsdp": 1, "tensor": 4}, 4, [(0, 8), (0, 8), (8, 16), (8, 16)]),
        ({"data": 1, "fsdp": 2, "tensor": 4}, 4, [(0, 8), (0, 8), (8, 16), (8, 16)]),
    ],
)
def test_processes_whose_devices_share_batch_shards_load_the_same_rows(
    mesh, num_processes, expected
):
    assert rows_of_processes(batch_sharding_on(**mesh), 16, num_processes) == expected


def test_global_shape_counts_rows_shared_by_processes_once():
    tensor = batch_sharding_on(data=1, fsdp=1, tensor=8)
    split = batch_sharding_on(data=2, fsdp=4, tensor=1)
    first_half = jax.devices()[:4]
    assert partitioning.global_shape_of_local(tensor, (16, 5), first_half) == (16, 5)
    assert partitioning.global_shape_of_local(split, (8, 5), first_half) == (16, 5)
    assert partitioning.global_shape_of_local(split, (16, 5)) == (16, 5)  # single process
    mixed = batch_sharding_on(data=2, fsdp=1, tensor=4)
    assert partitioning.global_shape_of_local(mixed, (8, 5), jax.devices()[:2]) == (16, 5)
    with pytest.raises(ValueError, match="does not split into the 4 shard"):
        partitioning.global_shape_of_local(split, (6, 5), first_half)
    # Row quarters 0 and 2 (not contiguous): jax still takes them as one local array.
    quarters = batch_sharding_on(data=4, fsdp=1, tensor=2)
    devices = jax.devices()
    assert partitioning.global_shape_of_local(
        quarters, (8, 5), [devices[i] for i in (0, 1, 4, 5)]
    ) == (16, 5)


def test_host_local_to_global_on_a_tensor_mesh_keeps_the_global_batch():
    sharding = batch_sharding_on(data=1, fsdp=2, tensor=4)
    batch = {"encoder_input_tokens": np.arange(16 * 3, dtype=np.int32).reshape(16, 3)}
    result = partitioning.host_local_to_global(batch, sharding.mesh, sharding)
    tokens = result["encoder_input_tokens"]
    assert tokens.shape == (16, 3) and tokens.sharding == sharding
    np.testing.assert_array_equal(np.asarray(tokens), batch["encoder_input_tokens"])


def test_a_process_may_hold_rows_that_are_apart_and_bad_batches_are_errors():
    # data=4 x tensor=2: devices 0,1 | 2,3 | 4,5 | 6,7 hold row quarters 0 | 1 | 2 | 3.
    sharding = batch_sharding_on(data=4, fsdp=1, tensor=2)
    devices = jax.devices()
    # Devices holding rows 0-3 and 8-11 (not adjacent, as a TPU pod's order can give a host):
    # loaded in ascending order, the order make_array_from_process_local_data expects.
    apart = partitioning.process_batch_rows(sharding, 16, [devices[0], devices[1], devices[4]])
    assert apart.tolist() == [0, 1, 2, 3, 8, 9, 10, 11]
    with pytest.raises(ValueError, match="does not split over the 4 batch shards"):
        partitioning.process_batch_rows(sharding, 6)
    small = partitioning.batch_sharding(
        make_mesh(tiny_config(data=2, fsdp=1, tensor=1), jax.devices()[:2])
    )
    with pytest.raises(ValueError, match="none of this process's devices"):
        partitioning.process_batch_rows(small, 16, jax.devices()[4:])
