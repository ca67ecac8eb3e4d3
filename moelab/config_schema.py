"""Every key of a run's config typed and ranged by the code that owns it, checked before any weight is read.

The schema is not written here: it is read from the owners.

- a component section (`prefetch`, `cache`, `balancer`, `decoding`, `workload`, `logger`, `routing`): the
  constructor annotations of the class its `name` registers (moelab/core/registry.py), so a new policy is typed
  by its own signature;
- `execution`: the `Execution` dataclass (moelab/core/types.py), new fields included;
- `model`: `ModelOptions` (moelab/models/build.py); `budget`: `BudgetOptions` (moelab/offload/budget.py);
  the top-level keys and `eval`: `RunOptions` and `EvalOptions` (moelab/config_check.py, moelab/eval/tasks.py).

An annotation is a type (`int`, `float`, `bool`, `str`, `Literal[...]`, `list[...]`, a `Mapping`, a dataclass for a
nested section, unions and `None`), optionally `Annotated[..., Range(...)]` for its allowed values. Values are not
coerced: a word where an integer belongs, or 1.5 where a count belongs, is refused in one line naming the key,
the value and what is allowed (`ConfigError`). A `str` key takes numbers too (a label or a folder named 2024).
"""

from __future__ import annotations

import dataclasses
import importlib
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Annotated, Any, Literal, Union

from moelab.core.errors import ConfigError

# sections whose schema is a registered component's constructor
COMPONENT_SECTIONS = ("prefetch", "cache", "balancer", "decoding", "workload", "logger", "routing")
# sections whose schema is a dataclass beside the code that reads them ("module:Class")
SECTION_SCHEMAS: dict[str, str] = {
    "execution": "moelab.core.types:Execution",
    "model": "moelab.models.build:ModelOptions",
    "budget": "moelab.offload.budget:BudgetOptions",
}
# a constructor parameter typed as a plain mapping that another module reads: the dataclass that module declares
NESTED_SCHEMAS: dict[str, str] = {
    "decoding.draft": "moelab.models.drafts:DraftOptions",
}
TOP_LEVEL_SCHEMA = "moelab.config_check:RunOptions"


@dataclass(frozen=True)
class Range:
    """Allowed values of a number: `lo <= v <= hi` (`lo < v` / `v < hi` when open); None: unbounded."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False

    def holds(self, v: float) -> bool:
        if self.lo is not None and (v <= self.lo if self.lo_open else v < self.lo):
            return False
        return not (self.hi is not None and (v >= self.hi if self.hi_open else v > self.hi))

    def describe(self, integer: bool) -> str:
        if self.hi is None:
            return f"> {_num(self.lo)}" if self.lo_open else f">= {_num(self.lo)}"
        if self.lo is None:
            return f"< {_num(self.hi)}" if self.hi_open else f"<= {_num(self.hi)}"
        if integer and not (self.lo_open or self.hi_open):
            return f"in {_num(self.lo)}..{_num(self.hi)}"
        return f"in {'(' if self.lo_open else '['}{_num(self.lo)}, {_num(self.hi)}{')' if self.hi_open else ']'}"


def _num(v: float | None) -> str:
    return str(int(v)) if v is not None and float(v).is_integer() else str(v)


# the ranges policies use most, for their constructors' annotations
Count = Annotated[int, Range(1)]  # a whole number of things, at least one
NonNegative = Annotated[int, Range(0)]
Positive = Annotated[float, Range(0, lo_open=True)]
Fraction = Annotated[float, Range(0, 1, lo_open=True)]  # (0, 1]
UnitInterval = Annotated[float, Range(0, 1)]  # [0, 1]

_NONE = type(None)


def _load(ref: str) -> Any:
    module, name = ref.split(":")
    return getattr(importlib.import_module(module), name)


def _hints(obj: Any) -> dict[str, Any]:
    target = obj if dataclasses.is_dataclass(obj) else obj.__init__
    try:
        return typing.get_type_hints(target, include_extras=True)
    except Exception:  # an annotation that does not resolve: its keys are still known, untyped
        return {}


@cache
def dataclass_fields(cls: type) -> dict[str, Any]:
    """key -> annotation of a dataclass schema."""
    hints = _hints(cls)
    return {f.name: hints.get(f.name, Any) for f in dataclasses.fields(cls)}


def constructor_fields(cls: Any) -> dict[str, Any]:
    """key -> annotation of a component's keyword parameters (unannotated: anything)."""
    import inspect

    hints = _hints(cls)
    sig = inspect.signature(cls)
    return {p.name: hints.get(p.name, Any) for p in sig.parameters.values()
            if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}


# ---------------------------------------------------------------------------------------------------- describing
def describe(tp: Any) -> str:
    """What an annotation allows, in words: 'an integer >= 1, or null'."""
    base, rng = _strip(tp)
    origin = typing.get_origin(base)
    if origin in (Union, types.UnionType):
        parts = [describe(a) for a in typing.get_args(base) if a is not _NONE]
        if _NONE in typing.get_args(base):
            parts.append("null")
        return ", or ".join(dict.fromkeys(parts))
    if origin is Literal:
        return "one of: " + ", ".join(_literal(v) for v in typing.get_args(base))
    if base is _NONE or base is None:
        return "null"
    if base is bool:
        return "true or false"
    if base is int:
        return "an integer" + (f" {rng.describe(True)}" if rng else "")
    if base is float:
        return "a number" + (f" {rng.describe(False)}" if rng else "")
    if base is str:
        return "a string"
    if base is Any:
        return "any value"
    if dataclasses.is_dataclass(base):
        return "a mapping of " + ", ".join(dataclass_fields(base))
    if _is_mapping(base):
        return "a mapping {key: value, ...}"
    if _is_sequence(base):
        args = typing.get_args(base)
        return f"a list [...] of {describe(args[0])}" if args else "a list [...]"
    return getattr(base, "__name__", str(base))


def _literal(v: Any) -> str:
    return ("true" if v else "false") if isinstance(v, bool) else "null" if v is None else str(v)


def _strip(tp: Any) -> tuple[Any, Range | None]:
    if typing.get_origin(tp) is Annotated:
        base, *meta = typing.get_args(tp)
        return base, next((m for m in meta if isinstance(m, Range)), None)
    return tp, None


def _is_mapping(tp: Any) -> bool:
    origin = typing.get_origin(tp) or tp
    return isinstance(origin, type) and issubclass(origin, Mapping)


def _is_sequence(tp: Any) -> bool:
    origin = typing.get_origin(tp) or tp
    return isinstance(origin, type) and issubclass(origin, Sequence) and origin is not str


# ---------------------------------------------------------------------------------------------------- checking
def accepts(tp: Any, value: Any, key: str = "") -> bool:
    """Whether `value` is of `tp` (nested mappings and lists are checked by `check_value`, which names the key)."""
    try:
        check_value(key or "value", value, tp)
    except ConfigError:
        return False
    return True


def check_value(key: str, value: Any, tp: Any) -> None:
    """Refuse `value` at `key` unless it is of `tp` and within its range (one line naming both)."""
    base, rng = _strip(tp)
    origin = typing.get_origin(base)
    if origin in (Union, types.UnionType):
        errors = []
        for arm in typing.get_args(base):
            try:
                check_value(key, value, arm)
                return
            except ConfigError as e:
                errors.append(e)
        # a nested key's own error is more useful than the union's, when only one arm is a container
        nested = [e for e in errors if getattr(e, "nested", False)]
        if len(nested) == 1 and isinstance(value, Mapping | list | tuple):
            raise nested[0]
        _refuse(key, value, tp)
    if origin is Literal:
        choices = typing.get_args(base)
        if not any(value == c and type(value) is type(c) for c in choices):
            _refuse(key, value, tp)
        return
    if base is Any:
        return
    if base is _NONE or base is None:
        if value is not None:
            _refuse(key, value, tp)
        return
    if base is bool:
        if not isinstance(value, bool):
            _refuse(key, value, tp)
        return
    if base is int:
        if not isinstance(value, int) or isinstance(value, bool) or (rng and not rng.holds(value)):
            _refuse(key, value, tp)
        return
    if base is float:
        if not isinstance(value, int | float) or isinstance(value, bool) or (rng and not rng.holds(value)):
            _refuse(key, value, tp)
        return
    if base is str:
        if not isinstance(value, str | int | float) or isinstance(value, bool):
            _refuse(key, value, tp)
        return
    if dataclasses.is_dataclass(base):
        if not isinstance(value, Mapping):
            _refuse(key, value, tp)
        check_section(key, value, dataclass_fields(base), nested=True)
        return
    if _is_mapping(base):
        if not isinstance(value, Mapping):
            _refuse(key, value, tp)
        args = typing.get_args(base)
        if len(args) == 2:
            for k, v in value.items():
                _nested(check_value, f"{key}.{k}", v, args[1])
        return
    if _is_sequence(base):
        if not isinstance(value, list | tuple):
            _refuse(key, value, tp)
        args = typing.get_args(base)
        if args:
            for i, v in enumerate(value):
                _nested(check_value, f"{key}[{i}]", v, args[0])
        return
    if isinstance(base, type) and not isinstance(value, base):
        _refuse(key, value, tp)


def _nested(fn: Callable[..., None], *args: Any) -> None:
    try:
        fn(*args)
    except ConfigError as e:
        e.nested = True  # type: ignore[attr-defined]
        raise


def _refuse(key: str, value: Any, tp: Any) -> typing.NoReturn:
    raise ConfigError(f"{key} must be {describe(tp)}, got {_show(value)}")


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def check_section(prefix: str, section: Mapping[str, Any], fields: Mapping[str, Any], nested: bool = False) -> None:
    """Each key of `section` against its annotation in `fields`; a key with none is refused, naming the allowed."""
    for key, value in section.items():
        full = f"{prefix}.{key}" if prefix else str(key)
        if key not in fields:
            raise ConfigError(f"unknown key {full}={_show(value)}; allowed under {prefix or 'the top level'}: "
                              f"{', '.join(fields)}")
        tp = fields[key]
        refined = NESTED_SCHEMAS.get(full)
        if refined is not None and value is not None:
            tp = _load(refined)
        if nested:
            _nested(check_value, full, value, tp)
        else:
            check_value(full, value, tp)


def section_fields(section: str, value: Mapping[str, Any]) -> dict[str, Any] | None:
    """The schema of one section of the config, or None when it cannot be known yet (an unregistered name: the
    registry reports that one)."""
    from moelab.core import registry

    if section in COMPONENT_SECTIONS:
        check_value(f"{section}.name", value.get("name"), str)  # a registered name: the registry lists them
        try:
            cls = registry.get(section, str(value.get("name")))
        except ConfigError:
            return None
        fields = {"name": str, **constructor_fields(cls)}
        if section == "logger":
            fields.pop("results_dir", None)  # the top-level results_dir, passed by the runner
        return fields
    if section in SECTION_SCHEMAS:
        return dataclass_fields(_load(SECTION_SCHEMAS[section]))
    return None


def check_config_types(c: Mapping[str, Any]) -> None:
    """Every key of a resolved run config against its owner's schema (one `ConfigError` line on the first bad)."""
    top = dataclass_fields(_load(TOP_LEVEL_SCHEMA))
    for key, value in c.items():
        if key in COMPONENT_SECTIONS or key in SECTION_SCHEMAS:
            if not isinstance(value, Mapping):
                raise ConfigError(f"{key} must be a mapping (a config group: {key}=<name>), got {_show(value)}")
            fields = section_fields(key, value)
            if fields is not None:
                check_section(key, value, fields)
            continue
        if key in top:  # an unknown top-level key: config_check.known_top_level_keys names it
            check_value(key, value, top[key])
