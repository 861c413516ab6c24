"""A hand-written loop (no Trainer): steps counted at ``optimizer.step()``, through torch's global
optimizer hooks.

Before the step the gradients are measured, after it the optimizer state, then the step's
snapshot is written; the model measured is the one (seen at ``from_pretrained`` or
``get_peft_model``) whose parameters the optimizer holds, its forwards counted for activations.
While a Trainer trains these hooks stand aside (its callback measures).

Stopping: SIGINT (``k``) asks for a stop; it is deferred to the end of the current
``optimizer.step()`` and raised there as ``KeyboardInterrupt``, what Ctrl-C would do, but between
steps (the step is recorded first). A loop that catches ``KeyboardInterrupt`` goes on to its own
ending; the exit event says ``stopped``.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

from ftwatch.training.wrapped.patches import quietly
from ftwatch.training.wrapped.session import SESSION


class HandLoop:
    """The state of the optimizer steps seen outside any Trainer."""

    def __init__(self) -> None:
        self.steps = 0
        self.optimizer: Any = None

    def before_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        """Gradients exist now; the first step enters ``training``."""
        if SESSION.trainers_running or SESSION.script_drives:
            return
        probe = SESSION.ensure_probe()
        if probe is None:
            return
        if self.optimizer is not optimizer:
            quietly("hand loop (optimizer)", lambda: self._attach(probe, optimizer))
        probe.before_optimizer_step()

    def _attach(self, probe: Any, optimizer: Any) -> None:
        first = self.optimizer is None
        self.optimizer = optimizer
        model = _model_of(optimizer)
        if model is not None and (probe.model is not model or getattr(probe, "_base_only", False)):
            probe.attach_model(model)
        probe.attach_optimizer(optimizer, hooks=False)
        if first:
            probe.install_stop_handler()
            probe.phase("training", max_steps=None)

    def after_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        """The optimizer state exists now: the step's snapshot; a stop asked for is raised here."""
        if SESSION.trainers_running or SESSION.script_drives or optimizer is not self.optimizer:
            return
        probe = SESSION.probe
        if probe is None:
            return
        self.steps += 1
        SESSION.last_step = self.steps
        probe.after_optimizer_step()
        probe.step_end(self.steps)
        probe.step_begin()
        if probe.stop_requested:
            probe.release_stop_handler()
            raise KeyboardInterrupt(f"stopped at a step boundary on SIGINT (step {self.steps})")


def _model_of(optimizer: Any) -> Any:
    """The latest model seen whose parameters the optimizer holds."""
    held = {id(p) for group in getattr(optimizer, "param_groups", []) for p in group.get("params", [])}
    for model in reversed(SESSION.models):
        try:
            if any(id(p) in held for p in model.parameters()):
                return model
        except Exception:
            continue
    return None


LOOP = HandLoop()


def patch_optimizer(module: ModuleType) -> None:
    """Register the global step hooks (cheap: they return at once inside a Trainer)."""
    def pre(optimizer: Any, args: Any, kwargs: Any) -> None:
        quietly("hand loop (before step)", lambda: LOOP.before_step(optimizer, args, kwargs))

    def post(optimizer: Any, args: Any, kwargs: Any) -> None:
        stop = quietly("hand loop (after step)", lambda: _after(optimizer, args, kwargs))
        if stop is not None:
            raise stop

    module.register_optimizer_step_pre_hook(pre)
    module.register_optimizer_step_post_hook(post)


def _after(optimizer: Any, args: Any, kwargs: Any) -> KeyboardInterrupt | None:
    try:
        LOOP.after_step(optimizer, args, kwargs)
    except KeyboardInterrupt as stop:
        return stop
    return None
