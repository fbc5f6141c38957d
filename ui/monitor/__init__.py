"""The training monitor: live curves, progress, controls and log of the running job."""
