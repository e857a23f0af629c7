"""The run directory: its layout and lock, the metrics log, and the checkpoint manager."""
