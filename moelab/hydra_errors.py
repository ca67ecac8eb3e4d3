"""Hydra's own errors (unknown group choice, unknown key, config-name typo, bad override syntax, launcher plugin
not installed) as one `error:` line and exit 2, before the command starts.

Hydra prints these as 8-20 lines, exit 1, sometimes naming a config the user never typed ("In
'policy/on_demand'"). `check_command_line` composes the command's config with Hydra's own compose API first:
each sweep choice once (not the whole product), so a sweep's bad point is found before its first run.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

CLUSTER_PLUGINS = ("joblib", "submitit_slurm", "submitit_local")
INSTALL_CLUSTER = 'pip install -e ".[cluster]"'


def check_command_line(argv: Sequence[str], config_dir: Path, config_name: str = "config") -> None:
    """Exit 2 with one line if Hydra could not compose the config of `python run.py argv`."""
    from hydra._internal.utils import get_args_parser

    args = get_args_parser().parse_args(list(argv))
    if args.help or args.hydra_help or args.shell_completion or args.info or args.config_dir or args.config_path:
        return
    error = compose_error(args.overrides, config_dir, args.config_name or config_name)
    if error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)


def compose_error(overrides: Sequence[str], config_dir: Path, config_name: str) -> str | None:
    """Hydra's composition error for these overrides (every sweep choice tried), as one line, or None."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(config_dir.resolve()), version_base=None):
            for point in sweep_choices(list(overrides), config_dir):
                try:
                    compose(config_name, overrides=point, return_hydra_config=True)
                except Exception as e:
                    return one_line(e, point, config_dir, config_name)
    except Exception as e:  # the override syntax itself
        return one_line(e, list(overrides), config_dir, config_name)
    finally:
        GlobalHydra.instance().clear()
    return None


def sweep_choices(overrides: list[str], config_dir: Path) -> list[list[str]]:
    """The first point of the sweep, then each other choice of each swept key with the first point's rest."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import Glob

    def values(o: Any) -> list[str]:
        if isinstance(o.value(), Glob):  # glob(...) of a config group: its files, as Hydra's sweeper expands it
            names = sorted(p.stem for p in (config_dir / o.key_or_group).glob("*.yaml"))
            found = list(o.value().filter(names))
            if not found:
                raise ValueError(f"{o.input_line} matches no config of {o.key_or_group}; allowed: {', '.join(names)}")
            return found
        return list(o.sweep_string_iterator())

    parsed = OverridesParser.create().parse_overrides(overrides)
    choices = [[o.input_line] if not o.is_sweep_override() else
               [f"{o.get_key_element()}={v}" for v in values(o)] for o in parsed]
    first = [c[0] for c in choices]
    points = [first]
    for i, c in enumerate(choices):
        points += [[*first[:i], v, *first[i + 1:]] for v in c[1:]]
    return points


def one_line(e: BaseException, overrides: Sequence[str], config_dir: Path, config_name: str) -> str:
    from hydra.errors import MissingConfigException, OverrideParseException

    text = str(e)
    if isinstance(e, OverrideParseException) or type(e).__name__.endswith("ParseException"):
        first = text.splitlines()[0] if text else type(e).__name__
        return (f"cannot parse the override {_unparsable(overrides)!r}: {first}; "
                "see https://hydra.cc/docs/advanced/override_grammar/basic/")
    if isinstance(e, MissingConfigException):
        return _missing_config(e, overrides, config_dir, config_name)
    if text.startswith("Could not override '"):
        key = text.split("'")[1]
        typed = next((o for o in overrides if o.split("=")[0].lstrip("+~") == key), key)
        return (f"unknown key {key!r} ({typed}); to add a new key use +{typed}; top-level keys: "
                f"{', '.join(_top_level(config_dir, config_name))}")
    return " ".join(text.split("\n\nConfig search path")[0].split())


def _unparsable(overrides: Sequence[str]) -> str:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    for o in overrides:
        try:
            parser.parse_override(o)
        except Exception:
            return o
    return " ".join(overrides)


def _missing_config(e: Any, overrides: Sequence[str], config_dir: Path, config_name: str) -> str:
    missing = str(getattr(e, "missing_cfg_file", "") or "")
    options = getattr(e, "options", None)
    if missing == config_name or "primary config" in str(e):
        names = sorted(p.stem for p in config_dir.glob("*.yaml"))
        return f"no config named {config_name!r} (--config-name); allowed: {', '.join(names)}"
    group, _, name = missing.rpartition("/")
    if group == "hydra/launcher" and name in CLUSTER_PLUGINS or "hydra/launcher/" in str(e) and any(
            p in str(e) for p in CLUSTER_PLUGINS):
        typed = next((o for o in overrides if o.lstrip("+").startswith("hydra/launcher=")), "hydra/launcher")
        return f"{typed} needs Hydra's launcher plugins, which are not installed: {INSTALL_CLUSTER}"
    if options is not None and group:
        typed = next((o for o in overrides if o.split("=")[0].lstrip("+~") == group), f"{group}={name}")
        return f"unknown {group} {name!r} ({typed}); allowed: {', '.join(sorted(options))}"
    return " ".join(str(e).split("\n\nConfig search path")[0].split())


def _top_level(config_dir: Path, config_name: str) -> list[str]:
    from omegaconf import OmegaConf

    try:
        cfg = OmegaConf.load(config_dir / f"{config_name}.yaml")
        groups = [p.name for p in config_dir.iterdir() if p.is_dir()]
        return sorted({*cfg.keys(), *groups} - {"defaults", "hydra"})
    except Exception:
        return []
