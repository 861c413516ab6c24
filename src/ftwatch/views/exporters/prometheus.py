"""Prometheus exposition of a run: the state every viewer folds, served for scraping.

The exporter is one more viewer. It reads the run log through :class:`~ftwatch.runlog.sources.LogFollower`
and folds it into a :class:`~ftwatch.runlog.state.RunState`, exactly as the dashboard and the headless
printer do, so the figures it serves are theirs. Two ways to feed it:

- :meth:`MetricsServer.follow` (or a ``log_path`` given to the constructor) runs a small follower
  thread with its own state: used by the dashboard path of ``ftwatch run``/``attach`` and by
  ``FtwatchCallback(metrics_port=...)`` inside the training process;
- :meth:`MetricsServer.publish` takes a state someone else folds (``follow_headless`` passes its own).

Either way, the folding thread turns the state into an immutable :class:`MetricsSnapshot` and swaps
it in; a scrape renders the latest snapshot, so it never sees a half-applied event and never takes
a lock the folding thread waits on.

Every series carries ``run`` (the header's ``name``: the config stem or the script name, shared by
every rank of a job), ``rank`` and ``device`` (``cuda:0``, ``cpu``). The metrics are listed in
``docs/prometheus.md``. This module imports neither torch nor textual.
"""

from __future__ import annotations

import contextlib
import errno
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily
from prometheus_client.metrics_core import Metric

from ftwatch.runlog.events import CATEGORIES, END_STATUSES, PHASES, SchemaVersionError
from ftwatch.runlog.occupancy import occupied_bytes, risk_level
from ftwatch.runlog.ranks import MultiLogFollower, RankedRun, is_multi_rank_dir
from ftwatch.runlog.sources import LogFollower
from ftwatch.runlog.state import RunState, sample_used
from ftwatch.views.exporters import DEFAULT_ADDR

#: Values of the ``status`` label of ``ftwatch_run_status``.
STATUSES: tuple[str, ...] = ("running", *END_STATUSES)
#: The labels every series carries, in this order.
BASE_LABELS: tuple[str, ...] = ("run", "rank", "device")
#: Label values are cut to this many characters (an outside process's command line can be long).
MAX_LABEL_CHARS = 200
#: How often the follower thread looks for new events when the log is quiet.
POLL_SECONDS = 0.1
#: The most log text the follower folds before it publishes (a long log is published in steps).
POLL_MAX_BYTES = 4 << 20


# -- the snapshot -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class MetricsSnapshot:
    """What one scrape shows: plain values copied from a :class:`RunState` in the folding thread."""

    run: str
    rank: str
    device: str
    info: dict[str, str]
    status: str
    phase: str | None
    memory: dict[str, int]
    peaks: dict[str, int]
    peak_total: int | None
    process_bytes: int | None
    rss_bytes: int | None
    peak_rss_bytes: int | None
    capacity: int | None
    headroom: int | None
    risk: int
    step: int
    max_steps: int | None
    loss: float | None
    steps_per_second: float | None
    warnings: dict[tuple[str, str], int] = field(default_factory=dict)
    start_t: float | None = None
    last_t: float | None = None

    @property
    def base(self) -> list[str]:
        """The values of :data:`BASE_LABELS`."""
        return [self.run, self.rank, self.device]


def _int(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return int(value)


def _label(value: Any) -> str:
    text = "" if value is None else str(value)
    return text if len(text) <= MAX_LABEL_CHARS else text[: MAX_LABEL_CHARS - 1] + "…"


def device_label(device: dict[str, Any]) -> str:
    """``cuda:0``, ``cpu``: the device's type and index as torch writes them."""
    kind = str(device.get("type") or "unknown")
    index = device.get("index")
    return f"{kind}:{index}" if index is not None else kind


def snapshot_of(state: RunState) -> MetricsSnapshot | None:
    """A consistent copy of what the metrics show; ``None`` until the header has been read.

    Call it in the thread that folds ``state`` (it reads the state without a lock).
    """
    header = state.header
    if not header:
        return None
    device = state.device
    memory = {k: int(v) for k, v in state.categories.items() if _int(v) is not None}
    capacity = state.capacity
    occupied = occupied_bytes(state)
    last_sample = state.last_sample or {}
    info = {
        "run_id": _label(header.get("run_id")),
        "model": _label(header.get("model")),
        "host": _label(header.get("host")),
        "pid": _label(header.get("pid")),
        "device_name": _label(device.get("name")),
        "capacity_source": _label(device.get("capacity_source")),
        "world_size": _label(header.get("world_size") or 1),
        "external": "true" if header.get("external") else "false",
        "ftwatch_version": _label((header.get("versions") or {}).get("ftwatch")),
    }
    warnings = Counter((str(w.get("code") or "unknown"), str(w.get("level") or "unknown"))
                       for w in state.warnings)
    return MetricsSnapshot(
        run=_label(header.get("name") or header.get("run_id") or "run"),
        rank=str(_int(header.get("rank")) or 0),
        device=device_label(device),
        info=info,
        status=state.status,
        phase=state.phase,
        memory=memory,
        peaks={k: int(v) for k, v in state.peaks.items()},
        peak_total=state.peak_total or None,
        process_bytes=sample_used(last_sample) if last_sample else None,
        rss_bytes=_int(last_sample.get("rss")),
        peak_rss_bytes=state.peak_rss or None,
        capacity=capacity,
        headroom=capacity - occupied if capacity is not None and occupied is not None else None,
        risk=risk_level(state),
        step=state.step,
        max_steps=state.max_steps,
        loss=state.loss,
        steps_per_second=state.steps_per_second,
        warnings=dict(warnings),
        start_t=state.first_t,
        last_t=state.last_t,
    )


# -- the collector ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class MetricDef:
    """One metric family: its name (as exposed), type, unit, extra labels and help text."""

    name: str
    kind: str  # "gauge", "counter" or "info"
    help: str
    unit: str = ""
    labels: tuple[str, ...] = ()


#: Every family the exporter can serve, in exposition order (``docs/prometheus.md`` lists them).
METRICS: tuple[MetricDef, ...] = (
    MetricDef("ftwatch_run_info", "info", "What the run is: one series of value 1, its facts as labels."),
    MetricDef("ftwatch_run_status", "gauge", "1 for the run's status (running, finished, failed, oom, stopped), "
              "0 for the others.", labels=("status",)),
    MetricDef("ftwatch_phase", "gauge", "1 for the phase the run is in (or ended in), 0 for the others.",
              labels=("phase",)),
    MetricDef("ftwatch_memory_bytes", "gauge", "Bytes per category in the latest breakdown (the last snapshot: "
              "per step while training, per phase end before).", "bytes", ("category",)),
    MetricDef("ftwatch_peak_bytes", "gauge", "Peak bytes per category over the run's snapshots.", "bytes",
              ("category",)),
    MetricDef("ftwatch_peak_total_bytes", "gauge", "Peak bytes this process held (the summary's peak_bytes.total).",
              "bytes"),
    MetricDef("ftwatch_process_bytes", "gauge", "Bytes the process holds now, from the latest device sample "
              "(CUDA: NVML, else the allocator's reservation; CPU: the resident set).", "bytes"),
    MetricDef("ftwatch_rss_bytes", "gauge", "Resident memory of the training process, from the latest sample.",
              "bytes"),
    MetricDef("ftwatch_peak_rss_bytes", "gauge", "Peak resident memory of the training process.", "bytes"),
    MetricDef("ftwatch_capacity_bytes", "gauge", "What the breakdown is drawn against: the device, else the "
              "budget, else the RAM.", "bytes"),
    MetricDef("ftwatch_headroom_bytes", "gauge", "Capacity minus what the run occupies (the measure of the live "
              "forecast; negative past the capacity).", "bytes"),
    MetricDef("ftwatch_risk_level", "gauge", "Out-of-memory risk while the run goes on: 0 ok, 1 watch, 2 danger."),
    MetricDef("ftwatch_step", "gauge", "The last optimizer step the run completed."),
    MetricDef("ftwatch_max_steps", "gauge", "The planned number of optimizer steps."),
    MetricDef("ftwatch_loss", "gauge", "Training loss of the last step (mean over its micro-batches)."),
    MetricDef("ftwatch_steps_per_second", "gauge", "Recent training speed, over the last steps."),
    MetricDef("ftwatch_warnings_total", "counter", "Warnings the live forecast has raised, by code and level.",
              labels=("code", "level")),
    MetricDef("ftwatch_start_timestamp_seconds", "gauge", "Unix time of the run's first event.", "seconds"),
    MetricDef("ftwatch_last_event_timestamp_seconds", "gauge", "Unix time of the latest event read (a stalled "
              "run stops advancing it).", "seconds"),
)


def _family(metric: MetricDef) -> Metric:
    """An empty family for ``metric`` (the client library adds the ``_info``/``_total`` suffix)."""
    labels = [*BASE_LABELS, *metric.labels]
    if metric.kind == "info":
        return InfoMetricFamily(metric.name.removesuffix("_info"), metric.help, labels=labels)
    if metric.kind == "counter":
        return CounterMetricFamily(metric.name.removesuffix("_total"), metric.help, labels=labels)
    return GaugeMetricFamily(metric.name, metric.help, labels=labels, unit=metric.unit)


def _ordered_categories(values: dict[str, int]) -> list[str]:
    """The categories in the stacked bar's order, then any unknown ones (from a newer probe)."""
    return [c for c in CATEGORIES if c in values] + sorted(k for k in values if k not in CATEGORIES)


def _values(snap: MetricsSnapshot, name: str) -> list[tuple[list[str], Any]]:
    """The samples of one family: (extra label values, value); none for a figure not known."""
    single: dict[str, float | int | None] = {
        "ftwatch_peak_total_bytes": snap.peak_total, "ftwatch_process_bytes": snap.process_bytes,
        "ftwatch_rss_bytes": snap.rss_bytes, "ftwatch_peak_rss_bytes": snap.peak_rss_bytes,
        "ftwatch_capacity_bytes": snap.capacity, "ftwatch_headroom_bytes": snap.headroom,
        "ftwatch_risk_level": snap.risk, "ftwatch_step": snap.step, "ftwatch_max_steps": snap.max_steps,
        "ftwatch_loss": snap.loss, "ftwatch_steps_per_second": snap.steps_per_second,
        "ftwatch_start_timestamp_seconds": snap.start_t, "ftwatch_last_event_timestamp_seconds": snap.last_t,
    }
    if name in single:
        value = single[name]
        return [] if value is None else [([], float(value))]
    if name == "ftwatch_run_info":
        return [([], snap.info)]
    if name == "ftwatch_run_status":
        return [([status], 1.0 if snap.status == status else 0.0) for status in STATUSES]
    if name == "ftwatch_phase":
        return [([phase], 1.0 if snap.phase == phase else 0.0) for phase in PHASES]
    if name in ("ftwatch_memory_bytes", "ftwatch_peak_bytes"):
        values = snap.memory if name == "ftwatch_memory_bytes" else snap.peaks
        return [([c], float(values[c])) for c in _ordered_categories(values)]
    if name == "ftwatch_warnings_total":
        return [([code, level], float(count)) for (code, level), count in sorted(snap.warnings.items())]
    raise KeyError(name)


class RunStateCollector:
    """A ``prometheus_client`` collector that renders the latest published :class:`MetricsSnapshot`.

    :meth:`publish` is called by the thread that folds the state; :meth:`collect` by the HTTP
    server's threads on each scrape. Publishing swaps one reference, so a scrape always renders
    one consistent snapshot. A multi-process run publishes every rank (:meth:`publish_ranks`):
    one series per rank, told apart by the ``rank`` label.
    """

    def __init__(self) -> None:
        self._snapshots: tuple[MetricsSnapshot, ...] = ()

    def publish(self, state: RunState) -> None:
        """Take a consistent copy of ``state`` (call it in the thread that folds it)."""
        snap = snapshot_of(state)
        self._snapshots = (snap,) if snap is not None else ()

    def publish_ranks(self, states: Iterable[RunState]) -> None:
        """Take a consistent copy of every rank's state (ranks without a header yet left out)."""
        self._snapshots = tuple(snap for snap in map(snapshot_of, states) if snap is not None)

    @property
    def snapshot(self) -> MetricsSnapshot | None:
        """The (first) snapshot the next scrape renders."""
        return self._snapshots[0] if self._snapshots else None

    @property
    def snapshots(self) -> tuple[MetricsSnapshot, ...]:
        """Every snapshot the next scrape renders (one per rank)."""
        return self._snapshots

    def describe(self) -> Iterator[Metric]:
        """Every family this collector can serve (lets ``?name[]=...`` scrapes find it)."""
        for metric in METRICS:
            yield _family(metric)

    def collect(self) -> Iterator[Metric]:
        """The families of the latest snapshot (none before the run's header is read); a family
        whose figure is not known is left out, never shown as 0 (``ftwatch_warnings_total`` is
        always there: no warning yet is a count of 0)."""
        snaps = self._snapshots
        for metric in METRICS:
            family = _family(metric)
            present = False
            for snap in snaps:
                samples = _values(snap, metric.name)
                if not samples and metric.kind != "counter":
                    continue
                present = True
                for extra, value in samples:
                    family.add_metric([*snap.base, *extra], value)
            if present:
                yield family


# -- the server -------------------------------------------------------------------------------------

class MetricsServerError(Exception):
    """The endpoint could not be opened (address in use, not local, not permitted): one line."""


class _QuietHandler(WSGIRequestHandler):
    """No access log: a scrape every few seconds must not write over the dashboard."""

    def log_message(self, format: str, *args: Any) -> None:
        return


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


def format_address(host: str, port: int) -> str:
    """``127.0.0.1:9400``, ``[::1]:9400``."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class MetricsServer:
    """A Prometheus endpoint (``/metrics``, any path in fact) for one run.

    ``MetricsServer(log_path, addr, port).start()`` binds, serves from a daemon thread and
    follows ``log_path`` in another; without ``log_path``, feed it with :meth:`publish` (or call
    :meth:`follow` later). Port 0 picks a free port (see :attr:`port`). :meth:`stop` closes both.
    """

    def __init__(self, log_path: str | Path | None = None, addr: str = DEFAULT_ADDR, port: int = 0, *,
                 poll_seconds: float = POLL_SECONDS) -> None:
        self.log_path = Path(log_path) if log_path is not None else None
        self.addr = addr
        self.requested_port = int(port)
        self.poll_seconds = poll_seconds
        self.collector = RunStateCollector()
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self.collector)  # type: ignore[arg-type]
        #: Why following stopped early (an unreadable log of another schema version), else None.
        self.follow_error: str | None = None
        #: Events the follower thread could not fold (malformed figures), skipped.
        self.skipped_events = 0
        self._httpd: WSGIServer | None = None
        self._serve_thread: threading.Thread | None = None
        self._follow_thread: threading.Thread | None = None
        self._stopping = threading.Event()

    # -- lifecycle --------------------------------------------------------------------------------
    def start(self) -> MetricsServer:
        """Bind and serve (and follow ``log_path`` when given); raises :class:`MetricsServerError`."""
        if self._httpd is not None:
            return self
        try:
            infos = socket.getaddrinfo(self.addr, self.requested_port, type=socket.SOCK_STREAM,
                                       flags=socket.AI_PASSIVE)
            family, _, _, _, sockaddr = infos[0]
            server_class = type("_BoundServer", (_ThreadingServer,), {"address_family": family})
            httpd = make_server(str(sockaddr[0]), self.requested_port, make_wsgi_app(self.registry),
                                server_class=server_class, handler_class=_QuietHandler)
        except OverflowError:  # a port past 65535
            raise MetricsServerError(f"cannot serve metrics on port {self.requested_port}: a port is 0 to "
                                     "65535") from None
        except OSError as exc:
            raise MetricsServerError(self._bind_message(exc)) from None
        self._httpd = httpd
        self._serve_thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.2},
                                              name="ftwatch-metrics-http", daemon=True)
        self._serve_thread.start()
        if self.log_path is not None:
            self.follow(self.log_path)
        return self

    def _bind_message(self, exc: OSError) -> str:
        where = format_address(self.addr, self.requested_port)
        if isinstance(exc, socket.gaierror):
            return f"cannot serve metrics on {where}: unknown address {self.addr!r}"
        reasons = {errno.EADDRINUSE: "the port is already in use",
                   errno.EADDRNOTAVAIL: "the address is not one of this machine's",
                   errno.EACCES: "permission denied (ports below 1024 need privileges)"}
        reason = reasons.get(exc.errno or 0, exc.strerror or str(exc))
        return f"cannot serve metrics on {where}: {reason}"

    def follow(self, log_path: str | Path) -> None:
        """Fold ``log_path`` (a run log or run directory, which may not exist yet) in a daemon
        thread of its own and publish after every batch of events, until :meth:`stop`."""
        if self._follow_thread is not None:
            raise RuntimeError("this metrics server already follows a log")
        self.log_path = Path(log_path)
        self._follow_thread = threading.Thread(target=self._follow, args=(self.log_path,),
                                               name="ftwatch-metrics-follow", daemon=True)
        self._follow_thread.start()

    def _follow(self, log_path: Path) -> None:
        multi = is_multi_rank_dir(log_path)
        follower: Any = MultiLogFollower(log_path) if multi else LogFollower(log_path)
        run = RankedRun()
        try:
            while not self._stopping.is_set():
                try:
                    events = follower.poll(max_bytes=POLL_MAX_BYTES)
                except SchemaVersionError as exc:
                    self.follow_error = str(exc)
                    return
                except OSError:  # replaced or unreadable for a moment: try again
                    events = []
                if not events:
                    self._stopping.wait(self.poll_seconds)
                    continue
                for item in events:
                    rank, event = item if multi else (0, item)
                    try:
                        run.apply(rank, event)
                    except (TypeError, ValueError, KeyError):  # a malformed figure: skip the event
                        self.skipped_events += 1
                self.publish_ranks(run)
        finally:
            follower.close()

    def publish(self, state: RunState) -> None:
        """Serve ``state`` from now on (call it in the thread that folds it; a consistent copy is
        taken at once)."""
        self.collector.publish(state)

    def publish_ranks(self, run: RankedRun) -> None:
        """Serve every rank of a multi-process run from now on (as :meth:`publish`)."""
        self.collector.publish_ranks(run.ranks.values())

    def stop(self, linger: float = 0.0) -> None:
        """Close the endpoint and stop following. ``linger`` seconds first keep the final state up
        for one more scrape (Ctrl-C cuts the wait short)."""
        if linger > 0 and self._httpd is not None:
            with contextlib.suppress(KeyboardInterrupt):
                time.sleep(linger)
        self._stopping.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        for thread in (self._serve_thread, self._follow_thread):
            if thread is not None and thread is not threading.current_thread():
                thread.join(timeout=2.0)

    def __enter__(self) -> MetricsServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- where ------------------------------------------------------------------------------------
    @property
    def host(self) -> str:
        """The address bound."""
        return str(self._httpd.server_address[0]) if self._httpd is not None else self.addr

    @property
    def port(self) -> int:
        """The port bound (the one the system picked when 0 was asked)."""
        return int(self._httpd.server_address[1]) if self._httpd is not None else self.requested_port

    @property
    def url(self) -> str:
        """``http://127.0.0.1:9400/metrics``."""
        return f"http://{format_address(self.host, self.port)}/metrics"

