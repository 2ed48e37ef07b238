"""Training: any declared torch model through one training loop (CPU and GPU, the same code)."""
