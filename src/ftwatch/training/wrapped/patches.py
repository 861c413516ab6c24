"""The patches of transformers and peft: phases from the real calls, the callback on every Trainer.

- ``PreTrainedModel.from_pretrained`` (every ``Auto*`` class ends there): ``loading_model``, the
  probe (and its samplers) started first so the load's spike is seen; the loaded model is
  measured as base weights.
- ``get_peft_model`` and ``PeftModel.from_pretrained``: ``applying_lora``; the model event after.
- ``Trainer.__init__`` (any subclass: TRL's, axolotl's, LLaMA-Factory's): ``preparing_trainer``,
  and ``FtwatchCallback`` added once (a callback the user added already is given this probe).
- ``Trainer.train``: SIGINT becomes a stop at the next step boundary while it runs; ``train()``
  returns and the script goes on.

Every wrapper calls the original whatever happens on our side (:func:`quietly`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from types import ModuleType
from typing import Any

from ftwatch.training.wrapped.session import SESSION, say

_failed: set[str] = set()


def quietly(part: str, action: Callable[[], Any]) -> Any:
    """Run one of our steps; a failure is said once (per part) and never reaches the script."""
    try:
        return action()
    except Exception as exc:
        if part not in _failed:
            _failed.add(part)
            say(f"{part}: {type(exc).__name__}: {exc} (that measurement is off; training goes on)")
        return None


class _Depth:
    """How deep in nested calls of one wrapped function we are (a subclass calling ``super()``)."""

    def __init__(self) -> None:
        self.level = 0


def _model_name(args: tuple[Any, ...], kwargs: dict[str, Any]) -> str | None:
    value = kwargs.get("pretrained_model_name_or_path", args[0] if args else None)
    return str(value) if value is not None else None


def patch_modeling_utils(module: ModuleType) -> None:
    """``PreTrainedModel.from_pretrained`` -> ``loading_model``."""
    cls = module.PreTrainedModel
    original = cls.__dict__["from_pretrained"].__func__
    depth = _Depth()

    @functools.wraps(original)
    def from_pretrained(klass: Any, *args: Any, **kwargs: Any) -> Any:
        loading = depth.level == 0 and SESSION.before_training() and not SESSION.trainers_running
        if loading:
            name = _model_name(args, kwargs)
            quietly("loading phase", lambda: (SESSION.ensure_probe(model_name=name), SESSION.phase("loading_model")))
        depth.level += 1
        try:
            model = original(klass, *args, **kwargs)
        finally:
            depth.level -= 1
        if loading:
            quietly("model accounting", lambda: _loaded(model))
        return model

    cls.from_pretrained = classmethod(from_pretrained)


def _on_meta(model: Any) -> bool:
    """A model without real weights (an estimate's trace on the meta device): not the run's."""
    try:
        return next(iter(model.parameters())).device.type == "meta"
    except Exception:
        return True


def _loaded(model: Any) -> None:
    if _on_meta(model):
        return
    SESSION.models.append(model)
    probe = SESSION.probe
    if probe is not None:
        probe.attach_model(model, emit_model_event=False, base_only=True)
        probe.snapshot()


def _lora_applied(model: Any) -> None:
    if _on_meta(model):
        return
    SESSION.models.append(model)
    probe = SESSION.probe
    if probe is not None:
        probe.attach_model(model)
        probe.snapshot()


def _wrap_lora(original: Callable[..., Any], depth: _Depth) -> Callable[..., Any]:
    @functools.wraps(original)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        outer = depth.level == 0 and SESSION.before_training() and not SESSION.trainers_running
        if outer:
            quietly("lora phase", lambda: SESSION.phase("applying_lora"))
        depth.level += 1
        try:
            model = original(*args, **kwargs)
        finally:
            depth.level -= 1
        if outer:
            quietly("lora accounting", lambda: _lora_applied(model))
        return model

    wrapper.__ftwatch_wrapped__ = True  # type: ignore[attr-defined]
    return wrapper


_LORA_DEPTH = _Depth()


def patch_peft(module: ModuleType) -> None:
    """``get_peft_model`` -> ``applying_lora`` (in peft's namespace and the module defining it)."""
    original = getattr(module, "get_peft_model", None)
    if original is None or getattr(original, "__ftwatch_wrapped__", False):
        return
    wrapped = _wrap_lora(original, _LORA_DEPTH)
    module.get_peft_model = wrapped
    import sys

    for name in ("peft.mapping_func", "peft.mapping"):
        home = sys.modules.get(name)
        if home is not None and getattr(home, "get_peft_model", None) is original:
            home.get_peft_model = wrapped


def patch_peft_model(module: ModuleType) -> None:
    """``PeftModel.from_pretrained`` (a saved adapter on a base model) -> ``applying_lora``."""
    cls = module.PeftModel
    original = cls.__dict__["from_pretrained"].__func__
    wrapped = _wrap_lora(original, _LORA_DEPTH)
    cls.from_pretrained = classmethod(wrapped)


def patch_trainer(module: ModuleType) -> None:
    """``Trainer.__init__`` -> ``preparing_trainer`` and the callback; ``Trainer.train`` -> the stop."""
    cls = module.Trainer
    original_init = cls.__init__
    original_train = cls.train
    init_depth = _Depth()

    @functools.wraps(original_init)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        outer = init_depth.level == 0
        if outer:
            SESSION.trainer_seen = True
            quietly("trainer phase", lambda: SESSION.phase("preparing_trainer"))
            quietly("trainer callback", lambda: _adopt_user_callbacks(kwargs.get("callbacks")))
        init_depth.level += 1
        try:
            original_init(self, *args, **kwargs)
        finally:
            init_depth.level -= 1
        if outer:
            quietly("trainer callback", lambda: _add_callback(self))

    @functools.wraps(original_train)
    def train(self: Any, *args: Any, **kwargs: Any) -> Any:
        probe = SESSION.probe
        if probe is not None:
            quietly("stop handler", probe.install_stop_handler)
            quietly("stop handler", SESSION.install_rank_stop)
        SESSION.trainers_running += 1
        try:
            return original_train(self, *args, **kwargs)
        finally:
            SESSION.trainers_running -= 1
            quietly("train end", lambda: _train_ended(self))

    cls.__init__ = __init__
    cls.train = train


def _adopt_user_callbacks(callbacks: Any) -> None:
    """A ``FtwatchCallback`` the script added itself measures into this process's probe (one log),
    given it before the Trainer's ``on_init_end`` would make it start one of its own."""
    from ftwatch.training.probe.callback import FtwatchCallback

    probe = SESSION.ensure_probe()
    if probe is None or not isinstance(callbacks, (list, tuple)):
        return
    for callback in callbacks:
        if isinstance(callback, FtwatchCallback) and callback.probe is None:
            callback.adopt(probe, _stop_requested(probe))  # phases, the stop and the end are ours


def _add_callback(trainer: Any) -> None:
    from ftwatch.training.probe.callback import FtwatchCallback

    probe = SESSION.ensure_probe()
    if probe is None:
        return
    handler = getattr(trainer, "callback_handler", None)
    present = [c for c in getattr(handler, "callbacks", []) if isinstance(c, FtwatchCallback)]
    if present:  # the user's own (given this probe by _adopt_user_callbacks)
        return
    trainer.add_callback(FtwatchCallback(probe=probe, stop_requested=_stop_requested(probe)))


def _stop_requested(probe: Any) -> Any:
    """Alone: the probe's SIGINT request; a rank of a launcher's job: the ranks' agreed request."""
    from ftwatch.runlog.paths import distributed_rank

    if distributed_rank()[2] > 1:
        from ftwatch.training.wrapped.rank_stop import agreed_stop

        return agreed_stop(SESSION.rank_stop)
    return lambda: probe.stop_requested


def _train_ended(trainer: Any) -> None:
    state = getattr(trainer, "state", None)
    step = getattr(state, "global_step", None)
    if isinstance(step, int):
        SESSION.last_step = step
    probe = SESSION.probe
    if probe is not None and not SESSION.stop_asked():
        probe.release_stop_handler()  # no stop asked: Ctrl-C after train() is the script's again
        SESSION.rank_stop.restore()
