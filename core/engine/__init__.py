"""The engine: the training loop and what it owns (run directory, checkpoints, optimizer, report)."""
