"""Run moelab: `python run.py [overrides]`, or a sweep with `python run.py -m ...` (see README)."""

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

CONF = Path(__file__).resolve().parent / "conf"


@hydra.main(version_base=None, config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    from moelab.command import run_from_hydra

    return run_from_hydra(cfg)


if __name__ == "__main__":
    from moelab.hydra_errors import check_command_line
    from moelab.sweep import exit_code

    check_command_line(sys.argv[1:], CONF)  # Hydra's own errors as one line, exit 2
    main()
    sys.exit(exit_code())  # a sweep with a failed point exits 1 (128 + N after a signal N it held)
