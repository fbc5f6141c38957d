"""Run history: past runs listed, their curves, comparisons and a params/accuracy scatter."""
