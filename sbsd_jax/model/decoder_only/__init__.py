"""Decoder-only students: Llama 3.x, Qwen2.5, Qwen3, Phi-3, Gemma 2 and Gemma 3 in Flax NNX."""
