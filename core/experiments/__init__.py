"""Experiments built from one config: run, fine-tune, compare, tune."""
