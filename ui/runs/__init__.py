"""The Runs page: past runs listed, their curves, comparisons and a params/accuracy scatter."""
