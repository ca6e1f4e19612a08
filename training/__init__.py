"""The optimisation loop, data preparation, the background job manager and checkpoints."""
