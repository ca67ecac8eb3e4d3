"""`python -m moelab.eval tasks=code_line_em,gsm8k [hydra overrides]`: one run that also scores lm-eval tasks.

The same as `python run.py eval.tasks=[...] ...` (timed pass, perplexity, then the tasks through the
executor); `tasks=` is a shorthand for `eval.tasks=`.
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

CONF = str(Path(__file__).resolve().parents[2] / "conf")


def _shorthand(argv: list[str]) -> list[str]:
    out = []
    for a in argv:
        if a.startswith("tasks="):
            names = a.removeprefix("tasks=").strip("[]")
            a = f"eval.tasks=[{names}]"
        out.append(a)
    return out


@hydra.main(version_base=None, config_path=CONF, config_name="config")
def main(cfg: DictConfig) -> float | None:
    from moelab.command import run_from_hydra

    return run_from_hydra(cfg)


if __name__ == "__main__":
    from moelab.hydra_errors import check_command_line
    from moelab.sweep import exit_code

    sys.argv[1:] = _shorthand(sys.argv[1:])
    check_command_line(sys.argv[1:], Path(CONF))  # Hydra's own errors as one line, exit 2
    main()
    sys.exit(exit_code())  # a sweep with a failed point exits 1
