r"""Where a greedy-decoding step goes: per-step time by operation, and CPU seconds per step.

    python benchmarks/decode_profile.py                      # t5_v1_1_small, batch 64, 16 steps
    python benchmarks/decode_profile.py --size=tiny --batch=8 --steps=8      # a smoke run

Decodes random tokens with a random T5 v1.1 of the chosen shape (`sbsd_jax.model.decode`, EOS
ignored so every call runs --steps steps), then

* CPU seconds per decoder step: process CPU time of a --steps call minus a 2-step call, median
  of --rounds; other jobs on a shared host stretch wall time far more than CPU time, so this
  is the figure to compare changes by;
* one call traced with `jax.profiler`: every operation run once per step (count a multiple of
  --steps), its time per step, grouped by the JAX operation it came from (a dot by its einsum
  spec, e.g. `btd,dv->btv` is the LM head), from the compiled program's metadata.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
NO_EOS = -1


def cpu_seconds(run, rounds: int) -> float:
    run()  # compile
    times = []
    for _ in range(rounds):
        start = time.process_time()
        run()
        times.append(time.process_time() - start)
    return float(np.median(times))


def op_names(hlo_text: str) -> dict[str, str]:
    """Compiled instruction name -> the JAX op_name of its metadata (its HLO opcode when it
    carries none, e.g. the attention products XLA rewrote into plain batched dots)."""
    names = {}
    for line in hlo_text.splitlines():
        match = re.match(r"\s*%([\w.\-]+) = \S+ ([\w\-]+)\(", line)
        if match:
            names[match[1]] = f"hlo/{match[2]}"
        match = re.match(r'\s*%([\w.\-]+) = .*?op_name="([^"]*)"', line)
        if match:
            names[match[1]] = match[2]
    return names


def per_step_profile(run, hlo_text: str, steps: int) -> list[tuple[str, float]]:
    """(operation, ms per step) of the ops a traced call ran once per step, largest first."""
    import jax

    with tempfile.TemporaryDirectory() as directory:
        jax.profiler.start_trace(directory)
        run()
        jax.profiler.stop_trace()
        (path,) = glob.glob(os.path.join(directory, "**", "*.trace.json.gz"), recursive=True)
        with gzip.open(path) as handle:
            events = json.load(handle)["traceEvents"]
    total: collections.Counter = collections.Counter()
    count: collections.Counter = collections.Counter()
    for event in events:
        if event.get("ph") == "X":
            total[event["name"]] += event["dur"]
            count[event["name"]] += 1
    names = op_names(hlo_text)
    groups: collections.Counter = collections.Counter()
    for name, microseconds in total.items():
        if name not in names or count[name] % steps:
            continue  # not a compiled op, or not once per step (the encoder, set-up)
        parts = names[name].split("/")
        key = f"dot {parts[-2]}" if parts[-1] == "dot_general" else parts[-1]
        groups[key] += microseconds / 1e3 / steps
    return groups.most_common()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="small", help="t5_v1_1_<size> shape")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--input_length", type=int, default=64)
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--top", type=int, default=15, help="operations to print")
    args = parser.parse_args()
    os.environ.setdefault("JAX_PLATFORMS", "cpu")

    import jax
    import jax.numpy as jnp
    from flax import nnx

    from sbsd_jax.model import decode
    from sbsd_jax.model.config import get_model_config
    from sbsd_jax.model.flops import decode_flops
    from sbsd_jax.model.t5 import T5

    config = get_model_config(f"t5_v1_1_{args.size}")
    graphdef, state = nnx.split(T5(config, rngs=nnx.Rngs(0)))
    rng = np.random.default_rng(0)
    shape = (args.batch, args.input_length)
    tokens = jnp.asarray(rng.integers(2, config.vocab_size, shape), jnp.int32)

    def compiled(steps: int):
        program = decode._greedy_decode.lower(graphdef, state, tokens, steps, NO_EOS).compile()
        return program, lambda: jax.block_until_ready(program(state, tokens))

    long_program, long_run = compiled(args.steps)
    _, short_run = compiled(2)
    step_cpu = (cpu_seconds(long_run, args.rounds) - cpu_seconds(short_run, args.rounds)) / (
        args.steps - 2
    )
    step_flops = decode_flops(config, args.batch, args.input_length, args.steps) - decode_flops(
        config, args.batch, args.input_length, args.steps - 1
    )
    print(
        f"t5_v1_1_{args.size}, batch {args.batch}, input {args.input_length}, {args.steps} steps; "
        f"load average {'/'.join(f'{x:.1f}' for x in os.getloadavg())}"
    )
    print(
        f"CPU time per decoder step: {1e3 * step_cpu:.1f} ms for {step_flops / 1e9:.2f} GFLOP "
        f"(last step), {step_flops / step_cpu / 1e9:.0f} GFLOP per CPU-second"
    )
    profile = per_step_profile(long_run, long_program.as_text(), args.steps)
    print(f"traced, per step (ms), {sum(ms for _, ms in profile):.1f} ms in all:")
    for name, ms in profile[: args.top]:
        print(f"  {ms:8.2f}  {name}")


if __name__ == "__main__":
    main()
