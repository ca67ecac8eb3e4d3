"""Components registered by name, so that adding one is a single file plus a YAML file.

Each kind maps to a package; every module in that package is imported the first time a
name of that kind is looked up, so a new file registers itself by being there. Each kind also names the
base class its components derive from: a class that does not is refused when it registers, not when a run
first calls a method it lacks.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from moelab.core.errors import ConfigError, UnknownComponentError

KIND_PACKAGES: dict[str, str] = {
    "prefetch": "moelab.policies.prefetch",
    "cache": "moelab.policies.cache",
    "balancer": "moelab.policies.balance",
    "decoding": "moelab.decoding",
    "arch": "moelab.models.arch",  # architecture adapters (conf/model/ holds model presets)
    "workload": "moelab.workloads",
    "logger": "moelab.loggers",
    "routing": "moelab.routing",
    "observer": "moelab.observers",
    "scorer": "moelab.scorers",  # a lookahead's ranking of a later layer's experts (LookaheadSpec.scorer)
}

# kind -> "module:Class" of the base every registered class of that kind must subclass (imported lazily: the
# bases live beside their components, which import this module)
KIND_BASES: dict[str, str] = {
    "prefetch": "moelab.policies.base:PrefetchPolicy",
    "cache": "moelab.policies.base:CachePolicy",
    "balancer": "moelab.policies.base:Balancer",
    "decoding": "moelab.decoding.base:Decoding",
    "arch": "moelab.models.adapter:MoeAdapter",
    "workload": "moelab.workloads.base:Workload",
    "logger": "moelab.loggers.base:Logger",
    "routing": "moelab.routing.base:Routing",
    "observer": "moelab.observers.base:Observer",
    "scorer": "moelab.scorers.base:Scorer",
}

_registry: dict[str, dict[str, Any]] = {kind: {} for kind in KIND_PACKAGES}
_discovered: set[str] = set()

T = TypeVar("T")


def base_class(kind: str) -> type:
    """The class every component of `kind` must subclass."""
    module, name = KIND_BASES[kind].split(":")
    base: type = getattr(importlib.import_module(module), name)
    return base


def register(kind: str, name: str) -> Callable[[T], T]:
    """Class decorator: make `obj` buildable as `kind=name`."""
    if kind not in _registry:
        raise KeyError(f"unknown component kind {kind!r}; kinds: {', '.join(sorted(_registry))}")

    def deco(obj: T) -> T:
        base = base_class(kind)
        if not (isinstance(obj, type) and issubclass(obj, base)):
            raise TypeError(f"{kind} {name!r}: {obj!r} must be a subclass of {base.__module__}.{base.__qualname__}")
        existing = _registry[kind].get(name)
        if existing is not None and existing is not obj:
            raise KeyError(f"{kind} {name!r} registered twice ({existing} and {obj})")
        _registry[kind][name] = obj
        return obj

    return deco


def _discover(kind: str) -> None:
    if kind in _discovered:
        return
    package = importlib.import_module(KIND_PACKAGES[kind])
    for info in pkgutil.iter_modules(package.__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"{package.__name__}.{info.name}")
    _discovered.add(kind)


def names(kind: str) -> list[str]:
    """Registered names of one kind, sorted."""
    _discover(kind)
    return sorted(_registry[kind])


def get(kind: str, name: str) -> Any:
    """The registered object, or an error listing what is registered."""
    if kind not in _registry:
        raise UnknownComponentError(f"unknown component kind {kind!r}; kinds: {', '.join(sorted(_registry))}")
    _discover(kind)
    if name not in _registry[kind]:
        raise UnknownComponentError(f"unknown {kind} {name!r}; registered {kind} names: {', '.join(names(kind))}")
    return _registry[kind][name]


def accepted_params(obj: Any) -> list[str]:
    """Keyword parameters a component's constructor takes (used to reject typos in configs)."""
    sig = inspect.signature(obj)
    return [p.name for p in sig.parameters.values() if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]


def split_params(kind: str, cfg: Mapping[str, Any]) -> tuple[Any, dict[str, Any]]:
    """Look up `cfg['name']` and check the other keys are constructor parameters."""
    if "name" not in cfg:
        raise ConfigError(f"{kind} config needs a 'name'; registered {kind} names: {', '.join(names(kind))}")
    cls = get(kind, str(cfg["name"]))
    params = {k: v for k, v in cfg.items() if k != "name"}
    allowed = accepted_params(cls)
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise ConfigError(
            f"{kind} {cfg['name']!r} has no parameter(s) {', '.join(unknown)}; "
            f"it accepts: {', '.join(allowed) or '(none)'}"
        )
    return cls, params


def build(kind: str, cfg: Mapping[str, Any], **extra: Any) -> Any:
    """Instantiate `cfg['name']` of `kind` with the remaining keys (plus runtime-only `extra`) as keywords."""
    cls, params = split_params(kind, cfg)
    return cls(**params, **extra)
