"""Following a live run costs little: a change that is only device samples (ten a second) is drawn at
most every ``SAMPLES_ONLY_INTERVAL``; a step, a phase, a warning or an end is drawn at once. The feed's
thread tells the app when there is something to draw (once for a batch), instead of a fast timer."""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace

from test_dashboard_app import wait_for as _until

from conftest import AliveHandle, wait_for
from ftwatch.runlog.events import encode
from ftwatch.views.dashboard import refresh
from ftwatch.views.dashboard.draw_notice import DrawNotice
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


# -- the feed tells the app what to draw -------------------------------------------------------
def test_news_is_told_at_once_and_once_until_the_next_view():
    notice = DrawNotice(samples_every=0.5)
    assert notice.due(3, only_samples=False, now=10.0)  # never viewed: everything is news
    assert not notice.due(4, only_samples=False, now=10.0)  # told already: the app draws the latest
    notice.viewed(4, now=10.0)
    assert not notice.due(4, only_samples=False, now=10.1)  # nothing new since the view
    assert notice.due(5, only_samples=False, now=10.1)


def test_samples_alone_are_told_once_their_interval_has_passed_and_news_at_once_still():
    notice = DrawNotice(samples_every=0.5)
    notice.viewed(7, now=20.0)
    assert not notice.due(8, only_samples=True, now=20.2)  # too soon after the last view
    assert not notice.due(9, only_samples=True, now=20.4)
    assert notice.due(10, only_samples=True, now=20.5)
    assert not notice.due(11, only_samples=True, now=20.9)  # told: the app draws them when it can
    assert notice.due(12, only_samples=False, now=20.9)  # a step after samples: told at once
    assert not notice.due(13, only_samples=False, now=21.0)


def test_the_feed_thread_tells_a_batch_of_news_once(tmp_path: Path):
    log = tmp_path / "events.jsonl"
    log.write_text(encode("header", {"run_id": "r", "name": "n", "pid": 1}, 1.0)
                   + encode("phase", {"name": "training"}, 1.0))
    feed = RunFeed(log, AliveHandle(), poll_interval=0.01)  # type: ignore[arg-type]  # live: never read to an end
    told: list[int] = []
    feed.watch(lambda: told.append(feed.version), samples_every=SAMPLES_ONLY_INTERVAL)
    feed.start()
    try:
        wait_for(lambda: len(told) == 1)  # the header and the phase
        feed.view()
        rounds = feed.rounds
        _append(log, *(_sample(2.0 + i / 10) for i in range(5)),
                encode("snapshot", {"phase": "training", "step": 1, "categories": {"weights": 5}}, 2.5))
        wait_for(lambda: len(told) == 2 and feed.rounds > rounds + 20)  # and twenty rounds more
        assert told[1] == feed.version  # one call for the whole batch, with everything read
    finally:
        feed.stop()


async def test_a_live_dashboard_draws_when_told_not_on_a_fast_timer(tmp_path: Path):
    """Nothing new for twenty rounds of the feed: the app is not asked to draw at every one of
    them, nor eight times a second (its clock runs once a second); a step is drawn when it comes."""
    from ftwatch.views.dashboard.app import FtwatchApp

    log = tmp_path / "events.jsonl"
    log.write_text(encode("header", {"run_id": "r", "name": "n", "pid": 1}, 1.0)
                   + encode("phase", {"name": "training"}, 1.0))
    feed = RunFeed(log, AliveHandle(), poll_interval=0.05)  # type: ignore[arg-type]
    app = FtwatchApp(log, AliveHandle(), feed=feed)  # type: ignore[arg-type]
    ticks: list[float] = []
    tick = app._tick

    def counted() -> None:
        ticks.append(time.monotonic())
        tick()

    app._tick = counted  # type: ignore[method-assign]
    async with app.run_test(size=(120, 36)) as pilot:
        await _until(pilot, lambda: "LIVE" in app.w_status.render().plain)
        settled = feed.rounds
        await _until(pilot, lambda: feed.rounds >= settled + 5)  # what the start asked for is drawn
        rounds, before, start = feed.rounds, len(ticks), time.monotonic()
        await _until(pilot, lambda: feed.rounds >= rounds + 20)  # 1 s of rounds or more
        quiet, spent = len(ticks) - before, time.monotonic() - start
        assert quiet <= 2 + spent / refresh.CLOCK_INTERVAL, (quiet, spent)  # not 8 a second
        _append(log, encode("snapshot", {"phase": "training", "step": 7, "categories": {"weights": 5}}, 2.0))
        await _until(pilot, lambda: "step 7" in app.w_status.render().plain)
