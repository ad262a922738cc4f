"""The Keras-style schedule protocol: :class:`LearningRateSchedule`, its registry and
its configs.

A schedule is a pure function ``step -> lr``.  Every subclass is registered by class name
when it is defined, so :func:`from_config` rebuilds built-in and user schedules alike from
the plain JSON-able dict that ``get_config()`` returns (nested schedules as nested
configs).  A user's class never replaces a built-in of the same name.
"""
from __future__ import annotations

import inspect
import json
from typing import Any, Dict, Optional, Tuple

from ..validate import py_scalar

__all__ = ["LearningRateSchedule", "from_config"]

_PACKAGE = __name__.rpartition(".")[0]  # fusedoptim.schedules: where the built-ins live
_REGISTRY: Dict[str, type] = {}


class LearningRateSchedule:
    """Base class of the Keras-style schedules: a pure function ``step -> lr``.

    Subclasses implement ``__call__(step) -> float`` and list their constructor
    arguments in ``_fields``; ``get_config`` / ``from_config`` / ``==`` / ``repr`` follow
    from those.  Subclasses are registered by class name, so the module-level
    ``from_config`` rebuilds them too.  A subclass that keeps other state overrides
    ``get_config`` (and ``from_config`` if its constructor differs from the config).
    """

    _fields: Tuple[str, ...] = ()
    name: Optional[str] = None

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        old = _REGISTRY.get(cls.__name__)
        # a user's class never shadows a built-in of the same name
        if old is None or not old.__module__.startswith(_PACKAGE + "."):
            _REGISTRY[cls.__name__] = cls

    def __call__(self, step) -> float:
        raise NotImplementedError(f"Learning rate schedule '{type(self).__name__}' must override "
                                  "`__call__(self, step)`.")

    def get_config(self) -> dict:
        """A plain JSON-able dict: ``{"class_name": ..., <constructor arguments>}``;
        nested schedules are nested configs."""
        if not self._fields:
            raise NotImplementedError(f"Learning rate schedule '{type(self).__name__}' must set `_fields` "
                                      "or override `get_config()` in order to be serializable.")
        cfg: Dict[str, Any] = {"class_name": type(self).__name__}
        for f in self._fields:
            cfg[f] = _config_value(getattr(self, f))
        if self.name is not None:
            cfg["name"] = self.name
        return cfg

    @classmethod
    def from_config(cls, config: dict) -> "LearningRateSchedule":
        """Rebuild a schedule from ``get_config()``'s dict.  Also accepts a Keras config
        (the ``get_config()`` of a Keras schedule, or ``{"class_name", "config"}`` from
        ``keras.optimizers.schedules.serialize``)."""
        if not isinstance(config, dict):
            raise TypeError(f"schedule config must be a dict, got {type(config).__name__}")
        cfg = dict(config)
        if isinstance(cfg.get("config"), dict) and "class_name" in cfg:  # Keras serialize() form
            cfg = dict(cfg["config"], class_name=cfg["class_name"])
        name = cfg.pop("class_name", None)
        if cls is LearningRateSchedule:
            if name is None:
                raise ValueError("schedule config has no 'class_name'; call <Class>.from_config(config)")
            if name not in _REGISTRY:
                raise ValueError(f"unknown schedule class {name!r} in config; known: {sorted(_REGISTRY)}")
            target = _REGISTRY[name]
        else:
            if name is not None and name != cls.__name__:
                raise ValueError(f"config is for a {name}, not a {cls.__name__}")
            target = cls
        sig = inspect.signature(target.__init__).parameters
        if not any(p.kind is p.VAR_KEYWORD for p in sig.values()):
            unknown = sorted(set(cfg) - set(sig) - {"self"})
            if unknown:
                raise ValueError(f"{target.__name__}.from_config: unknown config key(s) {unknown}")
        return target(**{k: _from_config_value(v) for k, v in cfg.items()})

    def __eq__(self, other):
        if type(self) is not type(other):
            return NotImplemented
        try:
            return self.get_config() == other.get_config()
        except NotImplementedError:
            return self is other

    def __hash__(self):
        try:
            return hash(json.dumps(self.get_config(), sort_keys=True))
        except NotImplementedError:
            return id(self)

    def __repr__(self):
        try:
            cfg = self.get_config()
        except NotImplementedError:
            return object.__repr__(self)
        cfg.pop("class_name")
        args = ", ".join(f"{k}={getattr(self, k, cfg[k])!r}" for k in cfg)
        return f"{type(self).__name__}({args})"


def _config_value(v):
    if isinstance(v, LearningRateSchedule):
        return v.get_config()
    if callable(v):
        raise TypeError(f"cannot serialize the callable {v!r}: only LearningRateSchedule objects have a config")
    if isinstance(v, (list, tuple)):
        return [_config_value(x) for x in v]
    return py_scalar(v)


def _from_config_value(v):
    if isinstance(v, dict) and "class_name" in v:
        return LearningRateSchedule.from_config(v)
    return v


def from_config(config: dict) -> LearningRateSchedule:
    """Rebuild any schedule (built-in or a registered subclass) from its ``get_config()``."""
    return LearningRateSchedule.from_config(config)
