"""Exporters: the run state, as other systems read it (``prometheus``: a scrape endpoint).

Exporters are viewers like the dashboard: they read the run log through
:class:`ftwatch.runlog.sources.LogFollower` and fold it into :class:`ftwatch.runlog.state.RunState`. They never
import torch or textual.
"""

from __future__ import annotations

#: Where a metrics endpoint binds unless told otherwise: this machine only.
DEFAULT_ADDR = "127.0.0.1"
