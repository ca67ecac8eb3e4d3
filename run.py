"""Run moelab: `python run.py [overrides]`, or a sweep with `python run.py -m ...` (see README)."""

import os
import signal
import sys

# Ctrl-C or SIGTERM at any moment ends the command with one line. Until moelab's own handlers are installed (the
# first run does it: moelab/interrupts.py), a signal ends start-up (imports, Hydra composing the config) at once:
# nothing has been measured or written yet, and an exception could be swallowed by a library's bare `except:`.


def _early_signal(signum: int, frame: object) -> None:
    what = "terminated (SIGTERM)" if signum == signal.SIGTERM else "interrupted"
    os.write(2, f"\n{what} during start-up; nothing was run\n".encode())  # (print could re-enter a write)
    os._exit(128 + int(signum))


def _stopped(signum: int) -> None:
    """One line on what was kept, then the shell's exit code (128 + N)."""
    what = "terminated (SIGTERM)" if signum == signal.SIGTERM else "interrupted"
    safekeeping = sys.modules.get("moelab.results.safekeeping")
    if getattr(safekeeping, "LAST", None) is not None:  # a run of this command stored its row
        print(f"\n{what}; finished runs keep their rows", file=sys.stderr, flush=True)
    else:
        print(f"\n{what} during start-up; nothing was run", file=sys.stderr, flush=True)
    sys.exit(128 + int(signum))


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _early_signal)
    signal.signal(signal.SIGINT, _early_signal)

try:
    from pathlib import Path

    import hydra
    from omegaconf import DictConfig

    CONF = Path(__file__).resolve().parent / "conf"

    @hydra.main(version_base=None, config_path="conf", config_name="config")
    def main(cfg: DictConfig) -> float | None:
        from moelab.command import run_from_hydra
        from moelab.runlog import to_job_log

        with to_job_log():  # what the job prints also goes to Hydra's run.log of this job
            return run_from_hydra(cfg)

    if __name__ == "__main__":
        from moelab.hydra_errors import check_command_line
        from moelab.interrupts import Interrupts
        from moelab.sweep import exit_code

        check_command_line(sys.argv[1:], CONF)  # Hydra's own errors as one line, exit 2
        main()
        if Interrupts.pending is not None:  # came after the last run, while Hydra finished: held until now
            _stopped(Interrupts.take_pending())
        sys.exit(exit_code())  # a sweep with a failed point exits 1
except KeyboardInterrupt as e:
    if __name__ != "__main__":
        raise
    _stopped(signal.SIGTERM if type(e).__name__ == "Terminated" else signal.SIGINT)  # moelab.interrupts' SIGTERM
