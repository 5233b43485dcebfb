"""Bridges from jaxobs to experiment trackers (W&B, TensorBoard); each imported on use."""
