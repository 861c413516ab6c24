"""Shared leaves every side imports: the config schema, byte units, text made safe for a terminal,
the one NVML question asked before a run. They import nothing else of ftwatch."""
