"""Adapting a trained model after the fact: low-rank adapters (LoRA) and quantization (Part 10)."""
