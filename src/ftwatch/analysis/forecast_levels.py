"""The forecast's risk levels and the headroom and step thresholds, with hysteresis, that set them."""

from __future__ import annotations

#: Risk levels, lowest first.
LEVELS: tuple[str, ...] = ("ok", "watch", "danger")

#: Headroom (share of capacity left at the peak) thresholds, with hysteresis: a level is entered
#: below its ENTER share and left only above its EXIT share.
WATCH_ENTER_HEADROOM = 0.15
WATCH_EXIT_HEADROOM = 0.20
DANGER_ENTER_HEADROOM = 0.05
DANGER_EXIT_HEADROOM = 0.08
#: Forecast thresholds: OOM expected within this many steps enters / keeps the level.
WATCH_ENTER_STEPS = 100
WATCH_EXIT_STEPS = 150
DANGER_ENTER_STEPS = 25
DANGER_EXIT_STEPS = 40


def _level_max(*levels: str) -> str:
    return max(levels, key=LEVELS.index)
