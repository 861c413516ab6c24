"""The Prometheus metric families of a run, and the collector that maps snapshots to their samples.

Every series carries ``run`` (the header's ``name``: the config stem or the script name, shared by
every rank of a job), ``rank`` and ``device`` (``cuda:0``, ``cpu``). The metrics are listed in
``docs/prometheus.md``; :data:`METRICS` defines them, :class:`RunStateCollector` renders the latest
published :class:`~ftwatch.views.exporters.prometheus_snapshot.MetricsSnapshot` as their samples.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily
from prometheus_client.metrics_core import Metric

from ftwatch.runlog.events import CATEGORIES, END_STATUSES, PHASES
from ftwatch.runlog.state import RunState
from ftwatch.views.exporters.prometheus_snapshot import MetricsSnapshot, snapshot_of

#: Values of the ``status`` label of ``ftwatch_run_status``.
STATUSES: tuple[str, ...] = ("running", *END_STATUSES)
#: The labels every series carries, in this order.
BASE_LABELS: tuple[str, ...] = ("run", "rank", "device")


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
