"""Following a live run costs little: a change that is only device samples (ten a second) is drawn at
most every ``SAMPLES_ONLY_INTERVAL``; a step, a phase, a warning or an end is drawn at the next tick."""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace

from ftwatch.runlog.events import encode
from ftwatch.views.dashboard import refresh
from ftwatch.views.dashboard.feed import RunFeed
from ftwatch.views.dashboard.multi_feed import MultiRunFeed
from ftwatch.views.dashboard.refresh import SAMPLES_ONLY_INTERVAL, DashboardRefresh


def _sample(t: float) -> str:
    return encode("sample", {"phase": "training", "rss": 1 << 30}, t)


def _feed(tmp_path: Path) -> tuple[RunFeed, Path]:
    log = tmp_path / "events.jsonl"
    log.write_text(encode("header", {"run_id": "r", "name": "n", "pid": 1}, 1.0)
                   + encode("phase", {"name": "training"}, 1.0))
    feed = RunFeed(log)
    feed.pump()
    return feed, log


def _append(log: Path, *lines: str) -> None:
    with log.open("a") as out:
        out.write("".join(lines))


def test_the_feed_tells_a_samples_only_change_from_news(tmp_path: Path):
    feed, log = _feed(tmp_path)
    try:
        shown = feed.version
        assert not feed.only_samples_since(shown)  # nothing changed
        _append(log, _sample(2.0))
        feed.pump()
        _append(log, _sample(2.1), _sample(2.2))
        feed.pump()
        assert feed.version == shown + 2 and feed.only_samples_since(shown)
        assert feed.only_samples_since(shown + 1)
        _append(log, encode("snapshot", {"phase": "training", "step": 1, "categories": {"weights": 5}}, 2.3))
        feed.pump()
        assert not feed.only_samples_since(shown) and not feed.only_samples_since(shown + 2)
        after_step = feed.version
        _append(log, _sample(2.4))
        feed.pump()
        assert feed.only_samples_since(after_step) and not feed.only_samples_since(after_step - 1)
        _append(log, _sample(2.5), encode("warning", {"code": "x", "level": "watch", "message": "m"}, 2.5))
        feed.pump()  # a batch with samples and a warning is news
        assert not feed.only_samples_since(after_step)
    finally:
        feed.stop()


def _refresher(feed: RunFeed, live: bool) -> SimpleNamespace:
    drawn: list[int] = []
    fake = SimpleNamespace(quit_when_stopped=False, paused=False, feed=feed, handle=object() if live else None,
                           _shown_version=feed.version, _last_render=time.monotonic(), drawn=drawn)

    def render_view(view, now):  # noqa: ANN001, ANN202 - the fake's draw: records the version drawn
        drawn.append(view.version)
        fake._shown_version, fake._last_render = view.version, now

    fake.render_view = render_view
    fake._only_samples = lambda version: DashboardRefresh._only_samples(fake, version)
    return fake


def _clocked(feed: RunFeed, live: bool, monkeypatch) -> tuple[SimpleNamespace, list[float]]:  # noqa: ANN001
    """A fake refresher and the clock the refresh reads (``clock[0]``, moved by the test)."""
    fake = _refresher(feed, live=live)
    clock = [fake._last_render]
    monkeypatch.setattr(refresh.time, "monotonic", lambda: clock[0])
    return fake, clock


def test_a_live_dashboard_draws_samples_alone_at_the_slower_cadence(tmp_path: Path, monkeypatch):
    feed, log = _feed(tmp_path)
    try:
        fake, clock = _clocked(feed, True, monkeypatch)
        _append(log, _sample(2.0))
        feed.pump()
        clock[0] += 0.125  # the next tick at 8 Hz: samples alone wait
        DashboardRefresh._tick(fake)
        assert fake.drawn == []
        clock[0] += SAMPLES_ONLY_INTERVAL  # past the interval: drawn
        DashboardRefresh._tick(fake)
        assert fake.drawn == [feed.version]
        _append(log, encode("snapshot", {"phase": "training", "step": 1, "categories": {"weights": 5}}, 2.1))
        feed.pump()
        clock[0] += 0.125  # a step: drawn at the next tick
        DashboardRefresh._tick(fake)
        assert fake.drawn[-1] == feed.version and len(fake.drawn) == 2
    finally:
        feed.stop()


def test_a_replay_draws_every_change_at_the_next_tick(tmp_path: Path, monkeypatch):
    feed, log = _feed(tmp_path)
    try:
        fake, clock = _clocked(feed, False, monkeypatch)
        _append(log, _sample(2.0))
        feed.pump()
        clock[0] += 0.125
        DashboardRefresh._tick(fake)
        assert fake.drawn == [feed.version]
    finally:
        feed.stop()


def _rank_header(rank: int, device: str = "cpu") -> str:
    return encode("header", {"run_id": f"r{rank}", "name": "ddp", "pid": 1, "rank": rank, "world_size": 2,
                             "device": {"type": device, "index": rank if device == "cuda" else None,
                                        "capacity": 8 << 30, "capacity_source": "device" if device == "cuda"
                                        else "ram"}}, 1.0)


def _cuda_sample(t: float, used: int) -> str:
    return encode("sample", {"phase": "loading_model", "rss": 1 << 30, "nvml": {"used": used, "process": used}}, t)


def _rank_sample(t: float, rss: int) -> str:
    return encode("sample", {"phase": "training", "rss": rss}, t)


def _multi_feed(tmp_path: Path) -> tuple[MultiRunFeed, dict[int, Path]]:
    """A two-rank run directory (``rank0/``, ``rank1/``), both in training, rank 0 the fuller."""
    logs = {}
    for rank in (0, 1):
        (tmp_path / f"rank{rank}").mkdir()
        logs[rank] = tmp_path / f"rank{rank}" / "events.jsonl"
        logs[rank].write_text(_rank_header(rank) + encode("phase", {"name": "training"}, 1.0)
                              + _rank_sample(1.5, (3 - rank) << 30))
    feed = MultiRunFeed(tmp_path, None)
    feed.pump()
    return feed, logs


def test_the_multi_rank_feed_tells_a_samples_only_change_from_news(tmp_path: Path):
    feed, logs = _multi_feed(tmp_path)
    try:
        assert sorted(feed.run.ranks) == [0, 1] and feed.focus == 0
        shown = feed.version
        assert not feed.only_samples_since(shown)  # nothing changed
        _append(logs[0], _rank_sample(2.0, 3 << 30))
        _append(logs[1], _rank_sample(2.0, 2 << 30))
        feed.pump()
        _append(logs[1], _rank_sample(2.1, 2 << 30))
        feed.pump()
        assert feed.version == shown + 2 and feed.only_samples_since(shown) and feed.only_samples_since(shown + 1)
        _append(logs[1], encode("snapshot", {"phase": "training", "step": 1, "categories": {"weights": 5}}, 2.2))
        feed.pump()  # a step on any rank is news
        assert not feed.only_samples_since(shown) and not feed.only_samples_since(shown + 2)
        after_step = feed.version
        _append(logs[0], _rank_sample(2.3, 3 << 30))
        feed.pump()
        assert feed.only_samples_since(after_step) and not feed.only_samples_since(after_step - 1)
    finally:
        feed.stop()


def test_samples_that_change_the_worst_rank_are_news(tmp_path: Path):
    for rank in (0, 1):  # CUDA ranks still loading: no snapshot yet, so the samples' device use ranks them
        (tmp_path / f"rank{rank}").mkdir()
        (tmp_path / f"rank{rank}" / "events.jsonl").write_text(
            _rank_header(rank, "cuda") + encode("phase", {"name": "loading_model"}, 1.0)
            + _cuda_sample(1.5, (3 - rank) << 30))
    feed = MultiRunFeed(tmp_path, None)
    try:
        feed.pump()
        assert feed.focus == 0
        shown = feed.version
        _append(tmp_path / "rank1" / "events.jsonl", _cuda_sample(2.0, 2 << 30))
        feed.pump()
        assert feed.focus == 0 and feed.only_samples_since(shown)
        _append(tmp_path / "rank1" / "events.jsonl", _cuda_sample(2.1, 5 << 30))  # rank 1 is now the fuller
        feed.pump()
        assert feed.focus == 1 and not feed.only_samples_since(shown) and not feed.only_samples_since(shown + 1)
    finally:
        feed.stop()


def test_a_live_multi_rank_dashboard_draws_samples_alone_at_the_slower_cadence(tmp_path: Path, monkeypatch):
    feed, logs = _multi_feed(tmp_path)
    try:
        fake, clock = _clocked(feed, True, monkeypatch)
        _append(logs[1], _rank_sample(2.0, 2 << 30))
        feed.pump()
        clock[0] += 0.125  # the next tick at 8 Hz: samples alone wait
        DashboardRefresh._tick(fake)
        assert fake.drawn == []
        clock[0] += SAMPLES_ONLY_INTERVAL  # past the interval: drawn
        DashboardRefresh._tick(fake)
        assert fake.drawn == [feed.version]
        _append(logs[0], encode("snapshot", {"phase": "training", "step": 1, "categories": {"weights": 5}}, 2.1))
        feed.pump()
        clock[0] += 0.125  # a step: drawn at the next tick
        DashboardRefresh._tick(fake)
        assert fake.drawn[-1] == feed.version and len(fake.drawn) == 2
    finally:
        feed.stop()
