r"""Training throughput on real CQA, side by side with the PyTorch reference recipe.

Both sides get exactly the same token ids: `tokenized()` of ../shared/bench/ref_recipe.py
(the reference's SentencePiece model, EOS appended, inputs truncated to --max_input_length,
targets to 256). The reference runs first as a subprocess, then our jitted step, in one
invocation on the same machine, so the printed ratio compares like with like. Like the trainer,
this script restarts itself once with glibc malloc on transparent huge pages
(sbsd_jax/runtime/host_malloc.py); the reference runs in the environment the script was started
in, as its README runs it, or with the same tunable under --ref_huge_pages.

    python benchmarks/train_throughput.py   # CPU: v1.1-small, batch 16, input 512, float32
    python benchmarks/train_throughput.py --compute_dtype=bfloat16             # ours in bf16
    python benchmarks/train_throughput.py --compute_dtype=bfloat16 --ref_bf16  # both in bf16
    python benchmarks/train_throughput.py --size=base --device=gpu --ref_device=cuda  # GPU

Precision: the reference recipe runs float32 on CPU unless given --bf16 (torch.autocast:
bf16 matmuls, float32 elsewhere); ours follows --compute_dtype (bf16 dot operands with float32
accumulation, float32 parameters, softmax, norms and loss). Compare like with like; the
README's table lists all three pairings.

What differs is how each side lays the tokens out, which is the point of the comparison:
the reference runs two forward/backward passes per batch (predict, explain), each padded to
its longest sequence; ours runs one pass over rows that pack several predict/explain sequences
each (segment-masked attention), with a fixed shape so XLA compiles the step once.
Throughput counts CQA examples consumed (each one predict + one explain sequence) and non-pad
tokens (inputs + targets of both tasks), as the reference's last line does.

Default layout, 16 rows of 256 input / 96 target tokens (--rows, --row_input_length,
--row_target_length; --max_input_length / --max_target_length stay the reference's
truncation, so both sides see the same ids). Why: CQA inputs average ~55 tokens (max 100)
and targets ~3 (label) / ~31 (rationale, max 60), so a 256-token row holds ~4 sequences at
~91% input fill, and 96 target slots take their targets at ~75% fill. Attention work per
token grows with the row length (scores, softmax and dropout masks are [rows, heads, L, L]),
so 8 x 512 rows spend twice the attention work per example for little better fill; 32 x 128
rows fill worse (82% / 51%: pairs of ~55-token inputs leave gaps). Rows are filled as the
training pipeline fills them (`first_fit_batch`: each sequence goes into the first row with
room for both its input and its target; a batch closes when an example's pair no longer fits),
~5% more examples per step than next-fit at this shape.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_BENCH_DIR = os.path.join(ROOT, "..", "shared", "bench")
SIZE_TO_MODEL = {
    "tiny": "t5_v1_1_tiny",
    "small": "t5_v1_1_small",
    "base": "t5_v1_1_base",
    "large": "t5_v1_1_large",
}
REF_LINE = re.compile(r"ref examples_per_s=([\d.]+) tokens_per_s=([\d.]+) step_s=([\d.]+)")


def load_reference(bench_dir: str):
    spec = importlib.util.spec_from_file_location(
        "ref_recipe", os.path.join(bench_dir, "ref_recipe.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_reference(args: argparse.Namespace) -> dict[str, float]:
    """The reference recipe in a subprocess (its own torch threads), parsed from its last line."""
    command = [
        sys.executable,
        os.path.join(args.bench_dir, "ref_recipe.py"),
        "--size",
        args.size,
        "--batch_size",
        str(args.batch_size),
        "--max_input_length",
        str(args.max_input_length),
        "--steps",
        str(args.ref_steps),
        "--warmup",
        str(args.warmup),
        "--threads",
        str(args.threads),
        "--device",
        args.ref_device,
    ]
    if args.ref_bf16:
        command.append("--bf16")
    from sbsd_jax.runtime.host_malloc import original_environment

    # The reference runs in the environment this benchmark was started with, as its README
    # runs it; --ref_huge_pages gives it our malloc tunable too.
    env = dict(os.environ) if args.ref_huge_pages else original_environment()
    print(f"reference: GLIBC_TUNABLES={env.get('GLIBC_TUNABLES', '')!r}", *command, flush=True)
    output = subprocess.run(command, check=True, capture_output=True, text=True, env=env).stdout
    match = REF_LINE.search(output)
    if not match:
        raise RuntimeError(f"reference printed no result line:\n{output}")
    print(output.strip().splitlines()[-1], flush=True)
    return {
        "examples_per_s": float(match[1]),
        "tokens_per_s": float(match[2]),
        "step_s": float(match[3]),
    }


def packed_batches(
    data: dict, *, rows: int, max_input_length: int, max_target_length: int
) -> Iterator[tuple[dict[str, np.ndarray], int, int]]:
    """(batch, examples in it, non-pad tokens in it) over the examples in order.

    The training pipeline's own layout: `first_fit_batch` over consecutive examples, each one's
    predict and explain sequences in the same batch, then `assemble_rows`.
    """
    from sbsd_jax.data.feature_converter import assemble_rows, first_fit_batch
    from sbsd_jax.data.features import TASK_LABEL, TASK_RATIONALE

    tasks = (("pred_inputs", "labels", TASK_LABEL), ("expl_inputs", "rationales", TASK_RATIONALE))
    start = 0
    while start < len(data["labels"]):
        examples = range(start, len(data["labels"]))
        lengths = (
            [(len(data[inp][i]), len(data[tgt][i])) for inp, tgt, _ in tasks] for i in examples
        )
        layout, taken = first_fit_batch(
            lengths,
            num_rows=rows,
            max_input_length=max_input_length,
            max_target_length=max_target_length,
        )
        inputs, targets, task_ids, row_indices = [], [], [], []
        for row in layout:
            row_indices.append([])
            for offset, index in row:
                inp, tgt, task_id = tasks[index]
                row_indices[-1].append(len(inputs))
                inputs.append(data[inp][start + offset])
                targets.append(data[tgt][start + offset])
                task_ids.append(task_id)
        batch = assemble_rows(
            row_indices,
            inputs,
            targets,
            task_ids,
            max_input_length=max_input_length,
            max_target_length=max_target_length,
            num_rows=rows,
        )
        yield batch, taken, sum(len(x) for x in inputs) + sum(len(y) for y in targets)
        start += taken


def run_ours(args: argparse.Namespace, data: dict) -> dict[str, float]:
    import jax

    from configs import base
    from sbsd_jax.settings import from_config
    from sbsd_jax.train import mesh as mesh_lib
    from sbsd_jax.train.partitioning import host_local_to_global
    from sbsd_jax.train.step import build_train_program

    config = base.get_config()
    config.model = SIZE_TO_MODEL[args.size]
    config.method = "step_by_step"
    config.batch_size = args.rows // 2
    config.max_input_length = args.row_input_length
    config.max_target_length = args.row_target_length
    config.pack = True
    config.compute_dtype = args.compute_dtype
    config.remat_policy = args.remat_policy
    config.rng_impl = args.rng_impl
    if args.dropout_rate is not None:
        config.model_overrides.dropout_rate = args.dropout_rate
    config.mesh.fsdp = -1
    spec = from_config.to_run_spec(config)
    mesh = mesh_lib.make_mesh(spec.mesh)
    program = build_train_program(spec.model, spec.optimizer, spec.step, mesh, spec.mesh.rules)
    state = program.init_fn(jax.random.key(0))

    batches = list(
        packed_batches(
            data,
            rows=args.rows,
            max_input_length=args.row_input_length,
            max_target_length=args.row_target_length,
        )
    )
    needed = args.warmup + args.steps
    if len(batches) < needed:
        raise SystemExit(
            f"only {len(batches)} packed batches of {args.rows} rows; raise --examples"
        )
    device_batches = [
        host_local_to_global(b, mesh, program.batch_sharding) for b, _, _ in batches[:needed]
    ]

    for batch in device_batches[: args.warmup]:
        state, metrics = program.train_step(state, batch)
    jax.block_until_ready(state)
    examples = tokens = slots = 0
    started = time.perf_counter()
    for (host, n_examples, n_tokens), batch in zip(
        batches[args.warmup : needed], device_batches[args.warmup :], strict=True
    ):
        state, metrics = program.train_step(state, batch)
        examples += n_examples
        tokens += n_tokens
        slots += host["encoder_input_tokens"].size + host["decoder_target_tokens"].size
    jax.block_until_ready(state)
    seconds = time.perf_counter() - started
    loss = float(jax.device_get(metrics["loss"]))
    result = {
        "examples_per_s": examples / seconds,
        "tokens_per_s": tokens / seconds,
        "step_s": seconds / args.steps,
        "nonpad_frac": tokens / slots,
        "examples_per_step": examples / args.steps,
    }
    print(f"final loss {loss:.4f}")
    line = " ".join(f"{k}={v:.4g}" for k, v in result.items())
    print(f"ours {line}", flush=True)
    if args.peak_tflops > 0:
        compiled = program.train_step.lower(state, device_batches[0]).compile()
        flops = _flops(compiled)
        achieved = flops / result["step_s"] / jax.device_count()
        result["mfu"] = achieved / (args.peak_tflops * 1e12)
        print(
            f"ours flops_per_step={flops:.3e} mfu={result['mfu']:.3f} "
            f"(peak {args.peak_tflops} TFLOP/s per device)"
        )
    return result


def _flops(compiled) -> float:
    """XLA's count of the compiled step's floating-point operations (all devices)."""
    analysis = compiled.cost_analysis()
    if isinstance(analysis, list):
        analysis = analysis[0]
    return float(analysis["flops"])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--bench_dir", default=DEFAULT_BENCH_DIR)
    parser.add_argument("--size", default="small", choices=sorted(SIZE_TO_MODEL))
    parser.add_argument("--batch_size", type=int, default=16, help="reference batch (examples)")
    parser.add_argument("--rows", type=int, default=16, help="our packed rows per step")
    parser.add_argument(
        "--max_input_length", type=int, default=512, help="truncation (both sides), reference"
    )
    parser.add_argument("--max_target_length", type=int, default=256, help="truncation")
    parser.add_argument("--row_input_length", type=int, default=256, help="our packed row")
    parser.add_argument("--row_target_length", type=int, default=96, help="our packed row")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--ref_steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--examples", type=int, default=1200, help="CQA examples to tokenise")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", choices=("cpu", "gpu", "tpu"))
    parser.add_argument("--ref_device", default="cpu")
    parser.add_argument("--ref_bf16", action="store_true")
    parser.add_argument("--compute_dtype", default="auto")
    parser.add_argument("--remat_policy", default="none")
    parser.add_argument(
        "--peak_tflops",
        type=float,
        default=0.0,
        help="peak dense TFLOP/s per device for MFU (H100 SXM bf16: 989)",
    )
    parser.add_argument("--dropout_rate", type=float, default=None, help="default: the model's 0.1")
    parser.add_argument(
        "--rng_impl", default="threefry2x32", help="dropout PRNG: threefry2x32 | rbg"
    )
    parser.add_argument("--skip_reference", action="store_true")
    parser.add_argument(
        "--ref_huge_pages",
        action="store_true",
        help="run the reference with our malloc tunable too (glibc.malloc.hugetlb=1)",
    )
    args = parser.parse_args()
    if args.device == "cpu":
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
    sys.path.insert(0, ROOT)
    from sbsd_jax.runtime.host_malloc import restart_with_huge_page_malloc
    from sbsd_jax.runtime.xla_flags import apply_default_xla_flags

    restart_with_huge_page_malloc()  # what sbsd_jax.main does, before anything starts
    apply_default_xla_flags()  # what sbsd_jax.main does, before JAX starts
    print(f"ours: GLIBC_TUNABLES={os.environ.get('GLIBC_TUNABLES', '')!r}", flush=True)

    reference = None if args.skip_reference else run_reference(args)
    ref = load_reference(args.bench_dir)
    data = ref.tokenized(args.examples, args.max_input_length, args.max_target_length)
    ours = run_ours(args, data)
    if reference:
        print(
            f"ratio examples_per_s={ours['examples_per_s'] / reference['examples_per_s']:.2f}x "
            f"tokens_per_s={ours['tokens_per_s'] / reference['tokens_per_s']:.2f}x"
        )


if __name__ == "__main__":
    main()
