"""Analysis of runs: pre-flight estimate, forecasts, OOM diagnosis and suggested fixes."""
