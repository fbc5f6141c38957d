"""The compression wizard: network and data, layers, training settings, review."""
