"""Rules about a run's phases that every viewer shares (no view imports here)."""

from __future__ import annotations

from collections.abc import Sequence

from ftwatch.runlog.events import PHASES
from ftwatch.runlog.state import PhaseRecord


def unwatched_phases(phases: Sequence[PhaseRecord]) -> set[str]:
    """The standard phases that come before the first recorded one: they ran (a run goes through
    them in order) while ftwatch was not yet watching, e.g. the loading of a script that added
    ``FtwatchCallback`` (its probe starts when the Trainer is built)."""
    if not phases or phases[0].name not in PHASES:
        return set()
    return set(PHASES[: list(PHASES).index(phases[0].name)])
