r"""bf16 parity of our T5 with transformers' PyTorch T5 on the same weights and device.

A random T5 v1.1 of --size is exported with our `save_hf_t5` and read by both sides; both run
the same batch (real CQA test inputs, random decoder tokens) in float32 and in bfloat16, and
each bf16 result is compared with the float32 transformers logits. Ours passes when its bf16
error is within --tolerance times transformers' own bf16 error, and float32 agrees closely.

    python benchmarks/gpu_parity.py --device=gpu --ref_device=cuda   # a GPU host
    python benchmarks/gpu_parity.py --size=tiny                      # CPU rehearsal
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from decode_throughput import DEFAULT_DATA, DEFAULT_SPM, cqa_inputs, tokenize  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="small")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--input_length", type=int, default=64)
    parser.add_argument("--target_length", type=int, default=32)
    parser.add_argument("--device", default="cpu", help="JAX platform for ours")
    parser.add_argument("--ref_device", default="cpu")
    parser.add_argument("--tolerance", type=float, default=2.0)
    args = parser.parse_args()
    if args.device == "cpu":  # elsewhere JAX picks the accelerator itself
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import jax
    import jax.numpy as jnp
    import torch
    import transformers
    from flax import nnx

    from sbsd_jax.model.config import get_model_config
    from sbsd_jax.model.hf_checkpoint import load_hf_t5_model, save_hf_t5
    from sbsd_jax.model.t5 import T5

    encoder = tokenize(cqa_inputs(DEFAULT_DATA, args.batch), DEFAULT_SPM, args.input_length)
    decoder = np.random.default_rng(0).integers(3, 8000, (args.batch, args.target_length))
    decoder[:, 0] = 0  # the start token
    config = get_model_config(f"t5_v1_1_{args.size}")
    logits = {}
    with tempfile.TemporaryDirectory() as directory:
        with jax.default_device(jax.devices("cpu")[0]):
            save_hf_t5(T5(config, rngs=nnx.Rngs(0)), config, directory)
        for dtype in ("float32", "bfloat16"):
            ours, _ = load_hf_t5_model(directory, dtype=dtype)
            forward = nnx.jit(lambda m, e, d: m(e, d))
            logits[f"ours {dtype}"] = np.asarray(
                forward(ours, jnp.asarray(encoder), jnp.asarray(decoder)), np.float32
            )
        hf = transformers.T5ForConditionalGeneration.from_pretrained(directory).eval()
        hf.to(args.ref_device)
        ids = torch.from_numpy(encoder.astype(np.int64)).to(args.ref_device)
        dec = torch.from_numpy(decoder.astype(np.int64)).to(args.ref_device)
        for dtype, torch_dtype in (("float32", torch.float32), ("bfloat16", torch.bfloat16)):
            model = hf.to(torch_dtype)
            with torch.inference_mode():
                out = model(input_ids=ids, attention_mask=(ids != 0).long(), decoder_input_ids=dec)
            logits[f"transformers {dtype}"] = out.logits.float().cpu().numpy()
    reference = logits["transformers float32"]
    scale = float(np.abs(reference).max())
    errors = {}
    for name, value in logits.items():
        errors[name] = float(np.abs(value - reference).max())
        agree = float((value.argmax(-1) == reference.argmax(-1)).mean())
        print(
            f"{name:22s} max |diff| vs transformers float32 {errors[name]:.3e} "
            f"({errors[name] / scale:.2e} of max |logit|), argmax agreement {100 * agree:.2f}%"
        )
    passed = (
        errors["ours float32"] <= 1e-3 * scale
        and errors["ours bfloat16"] <= args.tolerance * errors["transformers bfloat16"]
    )
    verdict = "PASS" if passed else "FAIL"
    print(f"bf16 parity on {jax.devices()[0].platform} / {args.ref_device}: {verdict}")
    sys.exit(0 if passed else 1)


if __name__ == "__main__":
    main()
