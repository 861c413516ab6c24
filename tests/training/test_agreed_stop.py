"""The ranks' stop agreement (``ftwatch.training.worker_stop.AgreedStop``) with a stand-in for the all-reduce, so
the moment a signal lands can be chosen: the end-to-end test (test_ddp_run) cannot choose it."""

from __future__ import annotations

import torch
import torch.distributed as dist

from ftwatch.training.worker_stop import AgreedStop, StopControl


def two_ranks(monkeypatch, other_rank_flag: int, during_reduce=lambda: None) -> None:
    """Pretend to be one of two gloo ranks whose peer contributes ``other_rank_flag``;
    ``during_reduce`` runs inside the all-reduce (where a signal handler may run)."""
    monkeypatch.setattr(dist, "is_available", lambda: True)
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda *a: 2)
    monkeypatch.setattr(dist, "get_backend", lambda *a: "gloo")

    def all_reduce(tensor, op=None):
        assert op == dist.ReduceOp.MAX
        during_reduce()
        tensor.copy_(torch.maximum(tensor, torch.tensor([other_rank_flag], dtype=tensor.dtype)))

    monkeypatch.setattr(dist, "all_reduce", all_reduce)


def test_a_signal_landing_during_the_reduce_waits_for_the_next_boundary(monkeypatch):
    stop = StopControl()
    agreed = AgreedStop(stop)
    two_ranks(monkeypatch, other_rank_flag=0, during_reduce=lambda: setattr(stop, "requested", True))
    assert agreed() is False  # the peer reduced a 0: it trains on, so this rank must too
    assert stop.requested is True  # the request is kept for the next boundary
    two_ranks(monkeypatch, other_rank_flag=0)
    assert agreed() is True  # next boundary: this rank's 1 reaches the peer, both stop here


def test_a_stop_asked_of_the_other_rank_stops_this_one_at_the_same_boundary(monkeypatch):
    stop = StopControl()
    two_ranks(monkeypatch, other_rank_flag=1)
    assert AgreedStop(stop)() is True and stop.requested is True


def test_no_request_anywhere_trains_on(monkeypatch):
    stop = StopControl()
    two_ranks(monkeypatch, other_rank_flag=0)
    assert AgreedStop(stop)() is False and stop.requested is False
