"""Benchmark data obtained through the package registry (no model or dataset hub at run time)."""
