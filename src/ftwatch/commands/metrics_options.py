"""The ``--metrics-*`` options that ``ftwatch run`` and ``ftwatch attach`` share.

``--metrics-port PORT`` serves Prometheus metrics for the run on ``127.0.0.1:PORT`` (0: a free
port, printed); ``--metrics-addr ADDR`` binds another address (``0.0.0.0`` or ``::`` for every
interface); ``--metrics-linger SECONDS`` keeps the endpoint up that long after the run ends so a
scrape sees the final state. Importing this module is light: ``prometheus_client`` is imported
only when a server starts.
"""

from __future__ import annotations

import argparse
import math
import sys
from typing import TYPE_CHECKING

from ftwatch.views.exporters import DEFAULT_ADDR

if TYPE_CHECKING:
    from ftwatch.views.exporters.prometheus import MetricsServer


#: The longest ``--metrics-linger``: a day (an endpoint kept up longer is a server, not a linger).
MAX_LINGER_SECONDS = 86400.0


def _shown(text: str) -> str:
    shown = repr(text)
    return shown if len(shown) <= 40 else shown[:30] + "…'"


def port_number(text: str) -> int:
    """An argparse type: a TCP port, 0 to 65535."""
    try:
        value = int(text) if len(text) <= 10 else None
    except ValueError:
        value = None
    if value is None:
        raise argparse.ArgumentTypeError(f"expected a port number (0 to 65535), got {_shown(text)}")
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"a port is 0 to 65535, got {value}")
    return value


def seconds(text: str) -> float:
    """An argparse type: a finite, non-negative number of seconds (at most a day)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {_shown(text)}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number of seconds, got {_shown(text)}")
    if value < 0:
        raise argparse.ArgumentTypeError(f"seconds cannot be negative, got {_shown(text)}")
    if value > MAX_LINGER_SECONDS:
        raise argparse.ArgumentTypeError(f"at most {MAX_LINGER_SECONDS:.0f} seconds (a day), got {_shown(text)}")
    return value


def add_metrics_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--metrics-port``, ``--metrics-addr`` and ``--metrics-linger`` to a command."""
    group = parser.add_argument_group("Prometheus metrics")
    group.add_argument("--metrics-port", type=port_number, metavar="PORT",
                       help="serve Prometheus metrics of the run on this port (0: a free one, printed)")
    group.add_argument("--metrics-addr", metavar="ADDR",
                       help=f"address to bind the metrics endpoint (default {DEFAULT_ADDR}; 0.0.0.0 or :: "
                            "for every interface)")
    group.add_argument("--metrics-linger", type=seconds, metavar="SECONDS", default=0.0,
                       help="keep the metrics endpoint up this long after the run ends (default 0)")


def check_metrics_arguments(args: argparse.Namespace) -> None:
    """The options' misuse that needs no socket (:class:`ftwatch.cli.UsageError`), so that a command
    can refuse it before its expensive checks; :func:`start_metrics` checks it too."""
    from ftwatch.commands.usage import UsageError

    if getattr(args, "metrics_port", None) is None:
        if getattr(args, "metrics_addr", None) is not None or getattr(args, "metrics_linger", 0.0):
            raise UsageError("--metrics-addr and --metrics-linger need --metrics-port")
        return
    if getattr(args, "detach", False):
        raise UsageError("--metrics-port needs a viewer: with --detach, serve them from "
                         "`ftwatch attach PID --headless --metrics-port PORT`")


def start_metrics(args: argparse.Namespace, command: str) -> MetricsServer | None:
    """The metrics server the options ask for, bound and serving (not yet fed), else ``None``.

    Misuse and an endpoint that cannot be opened (port in use, address not local) raise
    :class:`ftwatch.cli.UsageError`: one line, exit 2, before anything starts.
    """
    from ftwatch.commands.usage import UsageError

    port = getattr(args, "metrics_port", None)
    check_metrics_arguments(args)
    if port is None:
        return None
    from ftwatch.views.exporters.prometheus import MetricsServer, MetricsServerError

    server = MetricsServer(None, args.metrics_addr or DEFAULT_ADDR, port)
    try:
        server.start()
    except MetricsServerError as exc:
        hint = " (choose another --metrics-port, or 0 for a free one)" if "in use" in str(exc) else ""
        raise UsageError(f"{exc}{hint}") from None
    print(f"ftwatch {command}: serving Prometheus metrics on {server.url}", file=sys.stderr, flush=True)
    return server


def stop_metrics(server: MetricsServer | None, args: argparse.Namespace) -> None:
    """Close the endpoint, after ``--metrics-linger`` seconds."""
    if server is not None:
        server.stop(linger=getattr(args, "metrics_linger", 0.0) or 0.0)
