"""Headless output: progress lines while a run goes, and the text report of a finished run.

Reads only :class:`ftwatch.runlog.state.RunState`; used by ``run --headless`` and ``replay --headless``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TextIO

from ftwatch.common.safe_text import safe
from ftwatch.common.units import format_bytes, format_duration
from ftwatch.runlog.events import CATEGORIES, PHASES, TENSOR_CATEGORIES
from ftwatch.runlog.phases import unwatched_phases
from ftwatch.runlog.state import RunState

if TYPE_CHECKING:
    from ftwatch.runlog.ranks import RankedRun

SHORT = {"weights": "weights", "lora": "lora", "grads": "grads", "optimizer": "optim",
         "activations": "activ", "other": "other", "cache": "cache", "non_torch": "ctx",
         "other_processes": "others", "free": "free"}
#: What the report says of a phase that ran before ftwatch was watching, by the header's ``origin``.
UNWATCHED = {"callback": "before the callback started (not watched)"}
UNWATCHED_DEFAULT = "not watched"


def breakdown_line(categories: dict[str, int], order: tuple[str, ...] = CATEGORIES) -> str:
    """``weights 650.0 KiB  lora 16.0 KiB ...`` for the categories present (free left out)."""
    return "  ".join(f"{SHORT[c]} {format_bytes(categories[c])}" for c in order
                     if c in categories and c != "free")


def capacity_text(state: RunState, used: int) -> str:
    """``1.2 MiB / 23.5 GiB RAM (0.0%)``."""
    cap = state.capacity
    if not cap:
        return format_bytes(used)
    source = {"budget": " budget", "ram": " RAM"}.get(state.device.get("capacity_source") or "", "")
    return f"{format_bytes(used)} / {format_bytes(cap)}{source} ({100.0 * used / cap:.1f}%)"


class ProgressPrinter:
    """Prints a line at each phase change, every ``every`` steps, and for warnings and notes."""

    def __init__(self, out: TextIO, every: int | None = None, prefix: str = "", steps: bool = True) -> None:
        self.out = out
        self.every = every
        self.prefix = prefix  # "rank 1: " when several ranks print to one stream
        self.steps = steps  # False: no step lines (many ranks: only the first prints them)
        self._last_step_printed = -1
        self._unprinted: dict[str, Any] | None = None  # the last step snapshot without a line

    def _every(self, state: RunState) -> int:
        if self.every:
            return self.every
        return max(1, (state.max_steps or 100) // 10)

    def _print(self, state: RunState, text: str) -> None:
        self.out.write(f"[{format_duration(state.elapsed):>7}] {self.prefix}{text}\n")
        self.out.flush()

    def handle(self, state: RunState, event: dict[str, Any]) -> None:
        """Print what ``event`` (already folded into ``state``) deserves."""
        kind = event["kind"]
        if kind == "header":
            dev = state.device
            self._print(state, f"run {_word(event.get('name'))}  model {_word(event.get('model'))}  device "
                               f"{_word(dev.get('type'))} {_word(dev.get('name') or '')} "
                               f"capacity {format_bytes(state.capacity)} ({_word(dev.get('capacity_source'))})")
        elif kind == "phase":
            self._print(state, f"phase {event['name']}")
        elif kind == "model":
            self._print(state, f"model {_count(event.get('params_total'))} parameters, "
                               f"{_count(event.get('params_trainable'))} trainable")
        elif kind == "estimate":
            est = event.get("estimate_bytes") or {}
            verdict = {"fits": "fits", "tight": "TIGHT", "does_not_fit": "DOES NOT FIT"}.get(event.get("verdict"), "?")
            self._print(state, f"pre-flight estimate: {verdict}: peak {format_bytes(est.get('total'))} of "
                               f"{format_bytes(event.get('capacity_bytes'))} ({event.get('capacity_source')}) | "
                               f"{breakdown_line({k: v for k, v in est.items() if k != 'total'})}")
        elif kind == "note":
            self._print(state, f"note: {event.get('message')}")
        elif kind == "warning":
            self._print(state, f"WARNING [{event.get('level')}] {event.get('message')}")
            for s in event.get("suggestions") or []:
                self.out.write(f"          fix: {suggestion_text(s)}\n")
        elif kind == "snapshot":
            self._snapshot(state, event)
        elif kind == "exit" and event.get("error_type") != "ConfigError":  # the CLI prints those alone
            at = f" at step {event['step']}" if event.get("step") is not None else ""
            self._print(state, f"exit {event.get('status')}{at}"
                               + (f": {event['message']}" if event.get("message") else ""))

    def _snapshot(self, state: RunState, event: dict[str, Any]) -> None:
        step = event.get("step")
        if step is None:
            cats = event.get("categories") or {}
            used = sum(v for k, v in cats.items() if k not in ("other_processes", "free"))
            self._print(state, f"  {event.get('phase')}: {breakdown_line(cats)} | {capacity_text(state, used)}")
            return
        if not self.steps or (step != 1 and step % self._every(state) != 0):
            self._unprinted = event
            return
        self._step_line(state, event)

    def catch_up(self, state: RunState) -> None:
        """The history is read (an attach to a running run): print the last step's line, unless it
        was printed, so the first lines say where the run stands now, not only where it began."""
        event, self._unprinted = self._unprinted, None
        if event is not None and event.get("step") == state.step:
            self._step_line(state, event)

    def _step_line(self, state: RunState, event: dict[str, Any]) -> None:
        self._unprinted = None
        step, cats = event.get("step"), event.get("categories") or {}
        used = sum(v for k, v in cats.items() if k not in ("other_processes", "free"))
        total = f"/{state.max_steps}" if state.max_steps else ""
        loss = f" loss {event['loss']:.4f}" if event.get("loss") is not None else ""
        true_peak = f" | true peak {format_bytes(event['tensor_peak'])}" if event.get("tensor_peak") else ""
        self._print(state, f"step {step}{total}{loss} | {breakdown_line(cats)} | {capacity_text(state, used)}"
                           f"{true_peak}")


def suggestion_text(s: dict[str, Any]) -> str:
    """``use bfloat16 weights: [model] dtype = "bfloat16" (saves 12.5 GiB)``."""
    saves = f" (saves {format_bytes(s['saves_bytes'])})" if s.get("saves_bytes") else ""
    config = f": {s['config']}" if s.get("config") else ""
    return f"{s.get('change')}{config}{saves}"


def summary_text(state: RunState, stats: Any = None) -> str:
    """The human report of a run: status, peaks by category, phases, warnings, OOM diagnosis."""
    s = state.summary()
    # A log without an exit event (a replay: the process was killed, the log cut, or the run goes on
    # elsewhere) says so rather than calling it failed; its summary's status stays "failed".
    ended = s["status"] if state.exit is not None else "no exit event"
    lines = [f"{ended} after {s['steps']} steps in {format_duration(s['elapsed_seconds'])}"
             + (f" (loss {s['loss']:.4f})" if s.get("loss") is not None else "")]
    why = next((n.get("message") for n in state.notes if n.get("code") == "no_exit"), None)
    if state.exit is None and why:
        lines.append(f"  {safe(str(why), one_line=True)}")
    if s.get("error"):
        lines.append(f"error: {s['error']}")
    lines.append(f"model: {s.get('model')}  parameters {_count(s.get('params_total'))}, "
                 f"trainable {_count(s.get('params_trainable'))}")
    lines.append(f"device: {s.get('device')}  capacity {format_bytes(s['capacity_bytes'])} "
                 f"({s.get('capacity_source')})")
    estimated = (state.estimate or {}).get("estimate_bytes") or {}
    lines.append("peak by category:" + ("                          pre-flight estimate" if estimated else ""))
    peaks = s["peak_bytes"]
    # The estimate's parts that no snapshot measures (``other``; on CUDA, what it allows for the
    # context) get their rows too, before the totals, so that each column adds up to its total.
    unmeasured = [name for name in estimated if name not in peaks and name != "total"]
    names = [n for n in peaks if n != "total"] + unmeasured + (["total"] if "total" in peaks else [])
    for name in names:
        value = peaks.get(name)
        guess = f"{format_bytes(estimated[name]):>12}" if name in estimated else ""
        if value is None:
            where = " (in the true peak below)" if name == "other" and s.get("tensor_peak_bytes") else ""
            lines.append(f"  {name:<16}{'–':>12}{where:<24}{guess}")
            continue
        share = f" ({100.0 * value / s['capacity_bytes']:.2f}% of capacity)" if s["capacity_bytes"] else ""
        lines.append(f"  {name:<16}{format_bytes(value):>12}{share:<24}{guess}")
    if s.get("peak_rss_bytes"):
        lines.append(f"  {'process RSS':<16}{format_bytes(s['peak_rss_bytes']):>12}")
    measured = s.get("tensor_peak_bytes")
    if measured:  # CPU: the peak meter's largest step peak, split by what was live at it
        split = {k: v for k, v in measured.items() if k not in ("total", "step")}
        lines.append(f"true peak of live tensors (step {measured.get('step')}): "
                     f"{format_bytes(measured['total'])} = {breakdown_line(split, (*TENSOR_CATEGORIES, 'other'))}")
    unwatched = unwatched_phases(state.phases)
    if unwatched or s["phases"]:
        lines.append("phases (process memory: peak, added):")
    for name in (n for n in PHASES if n in unwatched):
        lines.append(f"  {name:<18} {UNWATCHED.get(state.origin or '', UNWATCHED_DEFAULT)}")
    for p in s["phases"]:
        added = p.get("added_bytes")
        lines.append(f"  {p['name']:<18} peak {format_bytes(p['peak_bytes']):>10}  added "
                     f"{('+' if (added or 0) >= 0 else '') + format_bytes(added):>11}  "
                     f"{format_duration(p.get('seconds'))}")
    for w in s["warnings"]:
        lines.append(f"warning [{w.get('level')}]: {w.get('message')}")
    if s.get("oom"):
        oom = s["oom"]
        lines.append(f"out of memory during {oom.get('phase')}: requested {format_bytes(oom.get('requested_bytes'))}")
    for sug in s.get("suggestions") or []:
        lines.append(f"  fix: {suggestion_text(sug)}")
    if s.get("lost_events"):
        lines.append(f"log: {s['lost_events']} events could not be written (a full or read-only disk); "
                     "training went on")
    if stats is not None and (stats.corrupt_lines or stats.unknown_kinds or stats.truncated_tail):
        lines.append(f"log: {counted(stats.corrupt_lines, 'corrupt line')} skipped{corrupt_causes(stats)}, "
                     f"{counted(stats.unknown_kinds, 'event of unknown kind', 'events of unknown kinds')} skipped"
                     + (", last line cut off" if stats.truncated_tail else ""))
    return "".join(line.rstrip() + "\n" for line in lines)


def counted(count: int, one: str, many: str | None = None) -> str:
    """``1 corrupt line``, ``3 corrupt lines`` (``many``: the plural when it is not ``one`` + s)."""
    return f"{count} {one if count == 1 else (many or one + 's')}"


def ranks_summary_text(run: RankedRun, stats: Any = None) -> str:
    """The report of a multi-process run: a line per rank, then the worst rank's full report."""
    worst = run.worst_rank()
    if worst is None:
        return "no rank has written its log yet\n"
    lines = [f"{len(run.ranks)} ranks here (world size {run.world_size}); worst: rank {worst}"]
    lines.append(f"  {'rank':<5}{'status':<10}{'step':>6}  {'peak tensors':>12}  {'peak process':>12}  device")
    for rank, state in run.ranks.items():
        s = state.summary() if state.exit else {**state.summary(), "status": "running"}
        peaks = s["peak_bytes"]
        tensors = sum(v for k, v in peaks.items() if k in TENSOR_CATEGORIES)
        process = process_peak(state)
        index = state.device.get("index")
        device = f"{state.device.get('type')}:{index}" if index is not None else str(state.device.get("type"))
        why = f"  {state.exit.get('error_type')}" if state.exit and state.exit.get("error_type") else ""
        lines.append(f"  {rank:<5}{s['status']:<10}{s['steps']:>6}  {format_bytes(tensors):>12}  "
                     f"{format_bytes(process):>12}  {device}{why}")
    for rank in run.missing_ranks:
        lines.append(f"  {rank:<5}{'no log':<10}")
    lines.append(f"rank {worst}:")
    return "\n".join(lines) + "\n" + summary_text(run.ranks[worst], stats)


def process_peak(state: RunState) -> int | None:
    """The most memory the process held: on CUDA its device memory (tensors, the allocator's cache,
    the CUDA context: the breakdown's total); elsewhere its RSS, which the tensors are a part of.
    ``None`` when unknown (no sample on a CPU run): the tensor total is not the process's memory."""
    if state.is_cuda:
        return state.peak_total or None
    if not state.peak_rss:
        return None
    return max(state.peak_rss, state.peak_total)


def _count(n: int | None) -> str:
    return f"{n:,}" if isinstance(n, int) else "n/a"


def _word(value: Any) -> str:
    """A header field for a one-line progress message (the reader has taken control characters out
    already; newlines go too, so a crafted name cannot fake a line of its own)."""
    return "–" if value is None else safe(str(value), one_line=True)


def corrupt_causes(stats: Any) -> str:
    """Why lines were skipped as corrupt, when known: `` (2 with fields of the wrong type: sample.rss, snapshot.loss; 1 longer than 1 MiB)``."""
    causes = []
    if getattr(stats, "invalid_events", 0):
        causes.append(f"{stats.invalid_events} with fields of the wrong type: {', '.join(sorted(stats.invalid_fields))}")
    if getattr(stats, "long_lines", 0):
        causes.append(f"{stats.long_lines} longer than 1 MiB")
    return f" ({'; '.join(causes)})" if causes else ""
