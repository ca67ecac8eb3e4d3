"""Ctrl-C (SIGINT) and SIGTERM (`kill`, a SLURM time limit) stop a run the same way.

Inside a run the signal stops it at once: it is recorded `interrupted`, rows of finished runs are kept, and the
same command resumes a sweep. Outside one (while Hydra composes a sweep's next job, which does not survive an
interrupt cleanly) and while a row is being written (a half-written row must not be lost), the signal is held
and acted on as soon as that is over.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Terminated(KeyboardInterrupt):
    """SIGTERM: handled as Ctrl-C is (the run is recorded interrupted)."""


class Interrupts:
    installed = False
    in_run = False
    pending: int | None = None  # a signal that came while it could not be acted on

    @classmethod
    def install(cls) -> None:
        if not cls.installed and threading.current_thread() is threading.main_thread():  # (else Python refuses)
            for sig in SIGNALS:
                signal.signal(sig, cls._handle)
            cls.installed = True

    @classmethod
    def _handle(cls, signum: int, frame: Any) -> None:
        if cls.in_run:
            cls._raise(signum)
        cls.pending = signum

    @staticmethod
    def _raise(signum: int) -> None:
        raise Terminated("SIGTERM") if signum == signal.SIGTERM else KeyboardInterrupt

    @classmethod
    @contextmanager
    def measuring(cls) -> Iterator[None]:
        """A run: a signal stops it at once."""
        cls.in_run = True
        try:
            yield
        finally:
            cls.in_run = False

    @classmethod
    @contextmanager
    def held(cls) -> Iterator[None]:
        """Writing results: a signal is held (`pending`) until the command can stop cleanly."""
        was, cls.in_run = cls.in_run, False
        try:
            yield
        finally:
            cls.in_run = was

    @classmethod
    def take_pending(cls) -> int | None:
        signum, cls.pending = cls.pending, None
        return signum


def signum_of(e: BaseException) -> int:
    return signal.SIGTERM if isinstance(e, Terminated) else signal.SIGINT


def exit_code(signum: int) -> int:
    """The shell's convention: 128 + the signal's number."""
    return 128 + int(signum)


def describe(signum: int) -> str:
    return "terminated (SIGTERM)" if signum == signal.SIGTERM else "interrupted"
