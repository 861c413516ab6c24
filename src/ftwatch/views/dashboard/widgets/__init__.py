"""The dashboard widgets, one concern each: status line, memory bar and legend, phases, timeline,
warnings, worker log."""
