"""Training (placeholder while being written)."""
