"""Training: the escalation model and the one training loop (CPU and GPU, the same code)."""
