"""The ADTN engine: PyTorch only, never Qt."""
