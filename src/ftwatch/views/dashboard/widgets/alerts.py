"""The warnings panel: OOM forecasts with their fixes, device notes, and the post-mortem at the end."""

from __future__ import annotations

from typing import Any

from rich.style import Style
from rich.text import Text
from textual.widgets import Static

from ftwatch.runlog.events import CATEGORIES
from ftwatch.views.dashboard import fmt
from ftwatch.views.dashboard.palette import ACCENT, DANGER, DIM, GOOD, LOOKS, WATCH
from ftwatch.views.dashboard.run_view import RunView
from ftwatch.views.dashboard.widgets.phases import SHORT

LEVELS = {"danger": ("▲ DANGER", DANGER), "watch": ("● WATCH", WATCH), "ok": ("✔ OK", GOOD)}


def _suggestions(items: list[dict[str, Any]] | None, out: Text) -> None:
    for item in items or []:
        if not isinstance(item, dict):
            continue
        saves = item.get("saves_bytes")
        out.append("  → ", Style(color=ACCENT))
        if saves:
            out.append(f"−{fmt.size(saves)} ", Style(color=GOOD, bold=True))
        out.append(str(item.get("change") or ""))
        out.append("\n")
        if item.get("config"):
            out.append(f"    {item['config']}\n", Style(color=DIM))
        if isinstance(item.get("why"), str):
            out.append(f"    {item['why']}\n", Style(color=DIM, italic=True))


def _breakdown_line(categories: dict[str, Any], out: Text) -> None:
    known = [(c, int(categories[c])) for c in CATEGORIES if categories.get(c)]
    for i, (name, nbytes) in enumerate(known):
        out.append(" · " if i else "")
        out.append("■ ", Style(color=LOOKS[name].colour))
        out.append(f"{LOOKS[name].label} {fmt.size(nbytes)}")
    out.append("\n")


def rank_prefix(view: RunView) -> str:
    """``rank 1: `` before what the panel says of a multi-process run's focused rank; else nothing."""
    if view.ranks is None or view.ranks.focus is None:
        return ""
    return f"rank {view.ranks.focus}: "


def post_mortem(view: RunView) -> Text:
    """Why the run ended badly: where, what to change (first: on a small screen the verdict and the
    first fix are what shows without scrolling), the error, the breakdown at the failure."""
    exit_event = view.exit or {}
    status = exit_event.get("status")
    oom = exit_event.get("oom") if isinstance(exit_event.get("oom"), dict) else None
    out = Text()
    phase = (oom or {}).get("phase") or (view.phases[-1].name if view.phases else None)
    title = "OUT OF MEMORY" if status == "oom" else "RUN FAILED"
    where = f" while {SHORT.get(phase, phase)}" if phase else ""
    if phase == "training" and exit_event.get("step") is not None:
        where += f" (step {exit_event['step']})"
    out.append(f"✖ {rank_prefix(view)}{title}{where}\n", Style(color=DANGER, bold=True))
    suggestions = exit_event.get("suggestions")
    if suggestions:
        out.append("to fix it:\n", Style(bold=True))
        _suggestions(suggestions, out)
    message = (oom or {}).get("message") or exit_event.get("message")
    if message:
        out.append(f"{message}\n")
    if oom and oom.get("requested_bytes"):
        out.append(f"asked for {fmt.size(oom['requested_bytes'])} more\n", Style(color=DIM))
    if oom and oom.get("last_categories"):
        out.append("held at the failure (the bar shows it): ", Style(bold=True))
        _breakdown_line(oom["last_categories"], out)
    traceback = exit_event.get("traceback")
    if traceback and status == "failed":
        lines = traceback if isinstance(traceback, list) else str(traceback).splitlines()
        out.append("traceback (last lines):\n", Style(bold=True))
        for line in lines[-4:]:
            out.append(f"  {line}\n", Style(color=DIM))
    return out


def end_summary(view: RunView) -> Text:
    """One block for a run that ended: status, steps, time, peak against capacity, loss."""
    exit_event = view.exit or {}
    status = exit_event.get("status", "failed")
    out = Text()
    colour = GOOD if status == "finished" else (WATCH if status == "stopped" else DANGER)
    who = f"rank {view.ranks.focus}" if view.ranks is not None and view.ranks.focus is not None else "run"
    out.append(f"{who} {status}", Style(color=colour, bold=True))
    out.append(f" after {view.step} step{'s' if view.step != 1 else ''} in {fmt.duration(view.elapsed)}\n")
    peak = max(view.peak_total, view.peak_rss if not view.is_cuda else 0)
    if peak and view.capacity:
        out.append(f"peak {fmt.size(peak)} = {fmt.share(peak / view.capacity)} of {fmt.size(view.capacity)}\n")
    if view.loss is not None:
        out.append(f"final loss {view.loss:.4g}\n")
    if exit_event.get("by") == "monitor":
        out.append(f"{exit_event.get('message', '')}\n", Style(color=DANGER))
    return out


def alerts_text(view: RunView) -> Text:
    """The whole panel: post-mortem or summary first, then warnings (newest first), then notes."""
    out = Text()
    if view.error:
        out.append(f"✖ {view.error}\n\n", Style(color=DANGER, bold=True))
    status = (view.exit or {}).get("status")
    if status in ("oom", "failed"):
        out.append_text(post_mortem(view))
        out.append("\n")
    if view.ended:
        out.append_text(end_summary(view))
        out.append("\n")
    for warning in reversed(view.warnings):
        label, colour = LEVELS.get(str(warning.get("level")), ("● NOTE", ACCENT))
        out.append(label, Style(color=colour, bold=True))
        code = warning.get("code")
        step = warning.get("step")
        soon = warning.get("steps_to_oom")
        meta = " ".join(x for x in (str(code) if code else "", f"step {step}" if step is not None else "",
                                    f"· OOM in ~{soon} steps" if soon is not None else "") if x)
        if meta:
            out.append(f" {meta}", Style(color=DIM))
        out.append(f"\n{rank_prefix(view)}{warning.get('message', '')}\n")
        _suggestions(warning.get("suggestions"), out)
        out.append("\n")
    if not view.warnings and not view.ended and view.status != "waiting":
        out.append("✔ no warnings\n", Style(color=GOOD))
    for note in view.notes:
        if view.external and note.get("code") == "no_breakdown":
            continue  # the notice in place of the phase strip says it, with the line to add
        out.append(f"ℹ {note.get('message', '')}\n", Style(color=DIM))
    skipped = view.skipped or {}
    if skipped.get("corrupt") or skipped.get("unknown"):
        out.append(f"ℹ skipped {skipped.get('corrupt', 0)} corrupt and {skipped.get('unknown', 0)} "
                   "unknown log lines\n", Style(color=DIM))
    out.rstrip()
    return out


class AlertsPanel(Static):
    """Warnings with suggested fixes, device notes, and the post-mortem of a failed run."""

    DEFAULT_CSS = """
    AlertsPanel { height: auto; width: 1fr; }
    """

    def show(self, text: Text) -> None:
        """Show prepared panel text (refresh only on change)."""
        if getattr(self, "_last", None) != text:
            self._last = text
            self.update(text)
