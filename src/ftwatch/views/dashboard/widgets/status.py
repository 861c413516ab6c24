"""The status line: what runs, where it is, how fast, and whether the screen is live."""

from __future__ import annotations

import time
from pathlib import PurePath
from typing import Any

from rich.style import Style
from rich.text import Text

from ftwatch.common.safe_text import safe
from ftwatch.runlog.endings import NO_EXIT_EVENT
from ftwatch.views.dashboard import fmt
from ftwatch.views.dashboard.palette import ACCENT, DANGER, DIM, GOOD, WATCH
from ftwatch.views.dashboard.run_view import ReplayInfo, RunView
from ftwatch.views.dashboard.widgets.lines import ChangedLines

PHASE_LABELS = {
    "loading_model": "loading model",
    "applying_lora": "applying LoRA",
    "preparing_trainer": "preparing trainer",
    "training": "training",
}

#: status -> (badge text, background colour)
BADGES = {
    "waiting": (" ◌ WAITING ", DIM),
    "running": (" ● LIVE ", GOOD),
    "replay": (" ↺ REPLAY ", ACCENT),
    "stopping": (" ■ STOPPING ", WATCH),
    "paused": (" ❚❚ PAUSED ", WATCH),
    "finished": (" ✔ FINISHED ", GOOD),
    "stopped": (" ■ STOPPED ", WATCH),
    "oom": (" ✖ OUT OF MEMORY ", DANGER),
    "failed": (" ✖ FAILED ", DANGER),
    "error": (" ✖ ERROR ", DANGER),
}

STALE_AFTER = 5.0


def badge_for(view: RunView, *, paused: bool, live: bool) -> str:
    """Which badge the run gets right now (a multi-process run's: over all its ranks)."""
    if view.error:
        return "error"
    if paused:
        return "paused"
    status = view.run_status
    if view.run_ended:
        return status if status in BADGES else "failed"
    if view.replay is not None:
        return "replay" if view.replay.playing or view.replay.loading else "paused"
    if view.stop_requested_at is not None:
        return "stopping"
    if status == "waiting":
        return "waiting"
    return "running" if live or view.external else "replay"


def model_label(model: str) -> str:
    """A hub id as is; a local path by its last part (the directory name is the model's name)."""
    if model.startswith(("/", "~", "./", "../")) or "\\" in model:
        return PurePath(model).name or model
    return model


def standing_warning(view: RunView) -> tuple[dict[str, Any] | None, str]:
    """The warning the status line shows and whose it is: the run's latest while it goes on; in a
    multi-process run the worst rank's (``"r1 "``)."""
    if view.ranks is not None:
        row = view.ranks.worst_row
        if row is None or row.warning is None or view.run_ended:
            return None, ""
        return row.warning, f"r{row.rank} "
    if view.ended or not view.warnings:
        return None, ""
    return view.warnings[-1], ""


def risk_text(view: RunView) -> Text | None:
    """The latest warning, when it still stands (watch or danger) and the run goes on (with
    several ranks: the worst rank's)."""
    warning, who = standing_warning(view)
    if warning is None:
        return None
    level = warning.get("level")
    if level not in ("watch", "danger"):
        return None
    soon = warning.get("steps_to_oom")
    what = str(warning.get("code") or "warning").replace("_", " ")
    text = f"{'▲' if level == 'danger' else '●'} {who}{what}" + (
        f": OOM in ~{soon} steps" if soon is not None else "")
    return Text(text, Style(color=DANGER if level == "danger" else WATCH, bold=True))


def rate_text(rate: float | None) -> str:
    """``30×``, ``0.5×``, ``3600×``; an auto rate to two figures (``1.6×``, not ``1.64176×``)."""
    if rate is None:
        return "?×"
    return f"{rate:.0f}×" if rate >= 10 else f"{rate:.2g}×"


def replay_text(info: ReplayInfo) -> Text:
    """Where a replay stands: loading, playing at some rate, paused, or at the end."""
    where = f"{fmt.duration(info.run_seconds)}/{fmt.duration(info.duration) if info.duration is not None else '?'}"
    if info.at_end:
        return Text("end of the log · space: play again", Style(color=ACCENT))
    if info.loading:
        return Text(f"reading the log {info.loaded * 100:.0f}%", Style(color=DIM))
    if info.playing:
        return Text(f"▶ {rate_text(info.rate)} {where}", Style(color=ACCENT, bold=True))
    return Text(f"❚❚ {where} · space plays, ←/→ steps", Style(color=WATCH))


def _join(pieces: list[Text], width: int, sep: str = "  ") -> Text:
    """Join pieces on one line, dropping the last ones that do not fit (they are the least important)."""
    out = Text(no_wrap=True, overflow="ellipsis")
    for piece in pieces:
        extra = (len(sep) if out.cell_len else 0) + piece.cell_len
        if out.cell_len and out.cell_len + extra > width:
            break
        if out.cell_len:
            out.append(sep)
        out.append_text(piece)
    return out


def progress(step: int, max_steps: int | None, cells: int = 12) -> Text:
    """A small progress bar for steps."""
    if not max_steps:
        return Text("")
    done = min(max(step / max_steps, 0.0), 1.0)
    filled = int(done * cells + 0.5)
    return Text.assemble(("━" * filled, Style(color=ACCENT)), ("━" * (cells - filled), Style(color="#444444")))


def progress_pieces(view: RunView) -> list[Text]:
    """Steps with a bar, loss, speed, elapsed time and (while training) the ETA."""
    steps = f"step {view.step}" + (f"/{view.max_steps}" if view.max_steps else "")
    pieces = [Text.assemble((steps, Style(bold=True)), " ", progress(view.step, view.max_steps)),
              Text(f"loss {view.loss:.4g}" if view.loss is not None else "loss –")]
    rate = view.steps_per_second
    if rate:
        pieces.append(Text(f"{rate:.3g} steps/s" if rate >= 1 else f"{1 / rate:.3g} s/step"))
    pieces.append(Text(f"elapsed {fmt.duration(view.elapsed)}"))
    if not view.ended and rate and view.max_steps and view.phase == "training":
        pieces.append(Text(f"ETA {fmt.duration(max(view.max_steps - view.step, 0) / rate)}"))
    return pieces


def outside_pieces(view: RunView) -> list[Text]:
    """A process watched from outside has no steps and no loss: say what is seen instead."""
    return [Text("outside view: NVML + psutil, no steps", Style(color=WATCH, bold=True)),
            Text(f"elapsed {fmt.duration(view.elapsed)}")]


def status_lines(view: RunView, width: int, *, paused: bool = False, live: bool = True,
                 title: str | None = None, now: float | None = None, mono: bool = False) -> Text:
    """The two status lines for ``view`` at ``width`` cells."""
    now = time.monotonic() if now is None else now
    key = badge_for(view, paused=paused, live=live)
    label, colour = BADGES[key]
    badge = Text(label, Style(bold=True, reverse=True) if mono else Style(bold=True, color="#000000", bgcolor=colour))
    header = view.header
    device = view.device
    name = safe(str(title or header.get("name") or "run"), one_line=True)  # a title: registry or config
    line1 = [badge]
    risk = risk_text(view)
    if risk is not None:
        line1.append(risk)
    line1.append(Text(str(name), Style(bold=True)))
    if header.get("model"):
        line1.append(Text(model_label(str(header["model"])), Style(color=ACCENT)))
    dead = [r.rank for r in view.ranks.rows if r.vanished] if view.ranks is not None else []
    if dead:
        line1.append(Text(f"rank{'s' if len(dead) > 1 else ''} {', '.join(map(str, dead))} vanished",
                          Style(color=DANGER, bold=True)))
    if view.phase and not view.ended:
        line1.append(Text("phase " + PHASE_LABELS.get(view.phase, view.phase)))
    elif view.ended and view.exit and view.exit.get("by") == "monitor" and view.ranks is None:
        recorded_end = view.exit.get("error_type") != NO_EXIT_EVENT  # a replay's log without an end
        line1.append(Text("worker vanished" if recorded_end else "no exit event in the log", Style(color=DANGER)))
    if device.get("name"):
        kind = "GPU" if device.get("type") == "cuda" else "CPU"
        line1.append(Text(f"{kind} {device['name']}", Style(color=DIM)))

    line2: list[Text] = []
    if view.error:
        line2.append(Text(safe(str(view.error), one_line=True), Style(color=DANGER)))
    elif view.status == "waiting" and view.replay is not None:
        line2.append(replay_text(view.replay))
    elif view.status == "waiting":  # the worker's ``starting`` note says what it does before its header
        starting = next((n for n in reversed(view.notes) if n.get("code") == "starting"), None)
        if starting is None:
            line2.append(Text("waiting for the run to start writing its log…", Style(color=DIM)))
        else:
            stage = safe(str(starting.get("message") or "worker starting"), one_line=True)
            line2.append(Text(f"{stage}… {fmt.duration(time.time() - float(starting['t']))}", Style(color=DIM)))
    else:
        line2 = outside_pieces(view) if view.external else progress_pieces(view)
        if view.ranks is not None and view.ranks.focus is not None:
            line2.insert(0, Text(f"rank {view.ranks.focus}:", Style(bold=True)))
        if view.replay is not None:
            line2.insert(0, replay_text(view.replay))
        elif paused:
            line2.insert(0, Text("display paused, training goes on (space)", Style(color=WATCH)))
        elif view.stop_requested_at is not None and not view.run_ended:
            waited = now - view.stop_requested_at
            line2.insert(0, Text(f"stop requested {fmt.duration(waited)} ago: stopping at the next step",
                                 Style(color=WATCH)))
        elif live and not view.run_ended and view.last_event_wall is not None:
            quiet = now - view.last_event_wall
            if quiet > STALE_AFTER:
                line2.insert(0, Text(f"no data for {fmt.duration(quiet)}", Style(color=WATCH, bold=True)))
    return Text("\n").join([_join(line1, width), _join(line2, width)])


class StatusLine(ChangedLines):
    """Two lines at the top of the screen: the run and its progress."""

    DEFAULT_CSS = """
    StatusLine { height: 2; width: 1fr; }
    """

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:  # noqa: A002
        super().__init__(id=id, classes=classes)
        self._text = Text("starting…")
        self._plain = ""

    def show(self, text: Text) -> None:
        """Show prepared status lines (only a line that changed is repainted)."""
        if text.plain != self._plain or text != self._text:
            self._text, self._plain = text, text.plain
            self.redraw()

    def render(self) -> Text:
        """The status lines."""
        return self._text
