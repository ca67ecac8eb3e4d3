"""Run moelab: `python run.py [overrides]`, or a sweep with `python run.py -m ...` (see README)."""

import hydra
from omegaconf import DictConfig


@hydra.main(version_base=None, config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    from moelab.runner import run_from_hydra

    return run_from_hydra(cfg)


if __name__ == "__main__":
    main()
