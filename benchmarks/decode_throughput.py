r"""Greedy decoding throughput: our jitted decoder against transformers' `generate`.

Both sides decode the same weights (a random T5 v1.1 of the chosen shape, exported with our
`save_hf_t5` and read back by `T5ForConditionalGeneration.from_pretrained`), the same token ids
(real CQA test questions, `predict: ` + question + answer choices as the reference builds them,
tokenized with ../shared/bench/cqa_spm.model, EOS appended, truncated and padded to
--input_length), the same number of new tokens and the same EOS handling (a row stops at EOS
1 and is padded with 0; a batch stops once every row has). The script checks that both sides
emit identical tokens, then times them alternately in one process (--rounds rounds of one
call each, after a warm-up), so host load hits both alike, and prints examples/s, the ratio,
and the GFLOP/s each side achieves next to a float32 matmul peak measured in the same run.
Each call's process CPU time is recorded too: on a host shared with other jobs the wall-clock
ratio swings with the load (PyTorch's thread pool suffers more from it than XLA's), while CPU
seconds per call measure the work each side does; the host's CPU and load average are printed.

    python benchmarks/decode_throughput.py                       # small, batch 1 and 64, ~2 min
    python benchmarks/decode_throughput.py --size=tiny --batch_sizes=1,8 --rounds=2  # smoke run
    python benchmarks/decode_throughput.py --device=gpu --ref_device=cuda  # a GPU host

--no_early_stop decodes all --new_tokens on both sides (EOS ignored), so the work per call is
fixed whatever the random weights emit.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
DEFAULT_DATA = os.path.join(ROOT, "..", "shared", "data", "cqa", "cqa_test.json")
DEFAULT_SPM = os.path.join(ROOT, "..", "shared", "bench", "cqa_spm.model")
EOS_ID, PAD_ID = 1, 0
NO_EOS = -1  # an id no token has: never stops


def cqa_inputs(path: str, count: int) -> list[str]:
    """'predict: ' + the reference's CQA input text (question and lettered choices)."""
    texts = []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if not line.strip():
                continue
            row = json.loads(line)
            c = row["choices"]
            texts.append(
                f"predict: {row['question']}\nAnswer Choices:\n(a) {c[0]}\n(b) {c[1]}\n"
                f"(c) {c[2]}\n(d) {c[3]}\n(e) {c[4]}"
            )
            if len(texts) == count:
                break
    return texts


def tokenize(texts: list[str], spm_path: str, length: int) -> np.ndarray:
    """int32 [len(texts), length]: ids + EOS (truncated keeping EOS), padded with 0."""
    import sentencepiece

    processor = sentencepiece.SentencePieceProcessor(model_file=spm_path)
    rows = np.zeros((len(texts), length), np.int32)
    for i, ids in enumerate(processor.encode(texts)):
        ids = ids[: length - 1] + [EOS_ID]
        rows[i, : len(ids)] = ids
    return rows


def host_description() -> str:
    """CPU model (from /proc/cpuinfo where there is one) and core count."""
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} cores"


def load_average() -> str:
    return "/".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"


def build_pair(args: argparse.Namespace, directory: str):
    """(our model, HF model) with the same random weights, through our HF export."""
    import jax
    import torch
    import transformers
    from flax import nnx

    from sbsd_jax.model.config import get_model_config
    from sbsd_jax.model.hf_checkpoint import load_hf_t5_model, save_hf_t5
    from sbsd_jax.model.t5 import T5

    config = get_model_config(f"t5_v1_1_{args.size}")
    with jax.default_device(jax.devices("cpu")[0]):
        model = T5(config, rngs=nnx.Rngs(args.seed))
        save_hf_t5(model, config, directory)
    ours, _ = load_hf_t5_model(directory, dtype=args.dtype)
    hf = transformers.T5ForConditionalGeneration.from_pretrained(directory).eval()
    hf.to(torch.device(args.ref_device))
    return ours, hf


def make_ours(model, new_tokens: int, eos_id: int):
    import jax.numpy as jnp
    from flax import nnx

    from sbsd_jax.model.decode import greedy_decode

    graphdef, state = nnx.split(model)

    def run(tokens: np.ndarray) -> np.ndarray:
        output = greedy_decode(
            graphdef, jnp.asarray(tokens), state=state, max_decode_length=new_tokens, eos_id=eos_id
        )
        return np.asarray(output)

    return run


def make_hf(model, new_tokens: int, eos_id: int, device: str):
    import copy

    import torch

    generation = copy.deepcopy(model.generation_config)
    generation.update(
        do_sample=False,
        num_beams=1,
        max_new_tokens=new_tokens,
        eos_token_id=None if eos_id == NO_EOS else eos_id,
        pad_token_id=PAD_ID,
        decoder_start_token_id=model.config.decoder_start_token_id,
    )

    def run(tokens: np.ndarray) -> np.ndarray:
        ids = torch.from_numpy(tokens.astype(np.int64)).to(device)
        with torch.inference_mode():
            output = model.generate(
                input_ids=ids,
                attention_mask=(ids != PAD_ID).long(),
                generation_config=generation,
            )
        output = output.cpu().numpy()[:, 1:]  # drop the decoder start token
        return np.pad(output, ((0, 0), (0, new_tokens - output.shape[1])))

    return run


def steps_decoded(tokens: np.ndarray, eos_id: int) -> int:
    """Decoder steps a batch ran: up to the last row's EOS (all of them without one)."""
    if eos_id == NO_EOS:
        return tokens.shape[1]
    stops = [
        int(np.argmax(row == eos_id)) + 1 if (row == eos_id).any() else len(row) for row in tokens
    ]
    return max(stops)


def time_alternating(
    sides: dict, tokens: np.ndarray, rounds: int
) -> tuple[dict[str, float], dict[str, float]]:
    """Median wall and process-CPU seconds per call of each side, calls alternating A, B, ..."""
    wall: dict[str, list[float]] = {name: [] for name in sides}
    cpu: dict[str, list[float]] = {name: [] for name in sides}
    for _ in range(rounds):
        for name, run in sides.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            run(tokens)
            wall[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
    median = lambda series: {name: float(np.median(values)) for name, values in series.items()}
    return median(wall), median(cpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="small", help="t5_v1_1_<size> shape")
    parser.add_argument("--batch_sizes", default="1,64")
    parser.add_argument("--input_length", type=int, default=64)
    parser.add_argument("--new_tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5, help="timed calls per side and batch")
    parser.add_argument("--no_early_stop", action="store_true", help="ignore EOS on both sides")
    parser.add_argument("--dtype", default="float32", help="our compute dtype")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--ref_device", default="cpu")
    parser.add_argument("--device", default="cpu", help="JAX platform for ours (cpu, gpu)")
    parser.add_argument("--data", default=DEFAULT_DATA)
    parser.add_argument("--spm", default=DEFAULT_SPM)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default="", help="also write the figures to this file")
    args = parser.parse_args()
    if args.device == "cpu":  # elsewhere JAX picks the accelerator itself
        os.environ.setdefault("JAX_PLATFORMS", "cpu")

    import jax
    import torch

    from sbsd_jax.eval.mfu import matmul_peak_flops
    from sbsd_jax.model.flops import decode_flops

    torch.set_num_threads(args.threads)
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    eos_id = NO_EOS if args.no_early_stop else EOS_ID
    tokens_all = tokenize(cqa_inputs(args.data, max(batch_sizes)), args.spm, args.input_length)
    with tempfile.TemporaryDirectory() as directory:
        ours_model, hf_model = build_pair(args, directory)
    config = ours_model.config
    load_before = load_average()
    peak = matmul_peak_flops("float32", 2048) / 1e9
    print(
        f"t5_v1_1_{args.size}: {sum(x.size for x in jax.tree.leaves(nnx_state(ours_model))):,} "
        f"params; input {args.input_length}, {args.new_tokens} new tokens, "
        f"{'no early stop' if args.no_early_stop else 'stop at EOS'}; ours {jax.devices()[0]} "
        f"{args.dtype}, transformers {args.ref_device} ({torch.get_num_threads()} threads)"
    )
    print(f"host: {host_description()}; load average (1/5/15 min) at start {load_before}")
    print(f"float32 matmul peak (2048^3, jax, this run): {peak:.0f} GFLOP/s")
    results = {
        "peak_matmul_gflops": peak,
        "host": host_description(),
        "load_average_start": load_before,
        "batches": [],
    }
    for batch in batch_sizes:
        tokens = tokens_all[:batch]
        sides = {
            "ours": make_ours(ours_model, args.new_tokens, eos_id),
            "generate": make_hf(hf_model, args.new_tokens, eos_id, args.ref_device),
        }
        outputs = {name: run(tokens) for name, run in sides.items()}  # warm-up and compile
        same = bool(np.array_equal(outputs["ours"], outputs["generate"]))
        steps = steps_decoded(outputs["ours"], eos_id)
        seconds, cpu_seconds = time_alternating(sides, tokens, args.rounds)
        flops = decode_flops(config, batch, int((tokens != PAD_ID).sum(1).max()), steps)
        row = {"batch": batch, "identical_tokens": same, "steps": steps, "gflop": flops / 1e9}
        for name, value in seconds.items():
            row[f"{name}_examples_per_s"] = batch / value
            row[f"{name}_gflops"] = flops / value / 1e9
            row[f"{name}_cpu_seconds"] = cpu_seconds[name]
        row["ratio"] = row["ours_examples_per_s"] / row["generate_examples_per_s"]
        row["cpu_ratio"] = row["generate_cpu_seconds"] / row["ours_cpu_seconds"]
        row["load_average"] = load_average()
        results["batches"].append(row)
        print(
            f"batch {batch:3d}: ours {row['ours_examples_per_s']:8.2f} ex/s "
            f"({row['ours_gflops']:6.1f} GFLOP/s)  generate {row['generate_examples_per_s']:8.2f} "
            f"ex/s ({row['generate_gflops']:6.1f} GFLOP/s)  ratio {row['ratio']:.2f}x  "
            f"{steps} steps, {row['gflop']:.1f} GFLOP/call, identical tokens: {same}"
        )
        print(
            f"           CPU seconds per call: ours {cpu_seconds['ours']:.2f}, generate "
            f"{cpu_seconds['generate']:.2f} (generate / ours {row['cpu_ratio']:.2f}x); "
            f"load average now {row['load_average']}"
        )
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(results, handle, indent=2)
    if not all(row["identical_tokens"] for row in results["batches"]):
        print("tokens differ between the two decoders", file=sys.stderr)
        sys.exit(1)


def nnx_state(model):
    from flax import nnx

    return nnx.state(model, nnx.Param)


if __name__ == "__main__":
    main()
