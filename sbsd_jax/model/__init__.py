"""The student: our Flax NNX T5, its sizes, decoding and Hugging Face checkpoint I/O."""
