"""Prometheus exposition of a run: the state every viewer folds, served for scraping.

The exporter is one more viewer. It reads the run log through :class:`~ftwatch.runlog.sources.LogFollower`
and folds it into a :class:`~ftwatch.runlog.state.RunState`, exactly as the dashboard and the headless
printer do, so the figures it serves are theirs. Two ways to feed it:

- :meth:`MetricsServer.follow` (or a ``log_path`` given to the constructor) runs a small follower
  thread with its own state: used by the dashboard path of ``ftwatch run``/``attach`` and by
  ``FtwatchCallback(metrics_port=...)`` inside the training process;
- :meth:`MetricsServer.publish` takes a state someone else folds (``follow_headless`` passes its own).

Either way, the folding thread turns the state into an immutable snapshot
(:mod:`~ftwatch.views.exporters.prometheus_snapshot`) and swaps it in; a scrape renders the latest
snapshot through :class:`~ftwatch.views.exporters.prometheus_metrics.RunStateCollector`, which also
defines the metric families, so it never sees a half-applied event and never takes a lock the
folding thread waits on. This module is the HTTP endpoint and its follower thread; it imports
neither torch nor textual.
"""

from __future__ import annotations

import contextlib
import errno
import socket
import threading
import time
from pathlib import Path
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app

from ftwatch.runlog.event_reader import SchemaVersionError
from ftwatch.runlog.ranks import MultiLogFollower, RankedRun, is_multi_rank_dir
from ftwatch.runlog.sources import LogFollower
from ftwatch.runlog.state import RunState
from ftwatch.views.exporters import DEFAULT_ADDR
from ftwatch.views.exporters.prometheus_metrics import RunStateCollector

#: How often the follower thread looks for new events when the log is quiet.
POLL_SECONDS = 0.1
#: The most log text the follower folds before it publishes (a long log is published in steps).
POLL_MAX_BYTES = 4 << 20


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
