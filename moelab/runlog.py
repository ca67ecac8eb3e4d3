"""What a `python run.py` job says on the console also goes to the log file Hydra keeps for it.

Hydra gives every job a log file (`outputs/<date>/<time>/run.log`, `multirun/<date>/<time>/<n>/run.log`) that only
receives Python `logging` records; moelab reports with plain prints (the summary, where the row went, one-line
errors), so the file stayed empty. `to_job_log` copies each complete line the job prints to stdout or stderr into
the job's log file as an INFO record of logger `moelab`; progress-bar redraws (carriage returns) leave only their
last state. Nothing is written when Hydra configured no log file (`hydra/job_logging=disabled`, plain Python).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TextIO


def _file_handlers() -> list[logging.FileHandler]:
    return [h for h in logging.getLogger().handlers if isinstance(h, logging.FileHandler)]


def _log(line: str, handlers: list[logging.FileHandler]) -> None:
    record = logging.LogRecord("moelab", logging.INFO, __file__, 0, line, None, None)
    for h in handlers:
        try:
            h.handle(record)
        except Exception:  # a log file that cannot be written must not end the run
            pass


class _Tee:
    """A text stream that writes through to `stream` and copies complete lines to the job's log file."""

    def __init__(self, stream: TextIO, handlers: list[logging.FileHandler]) -> None:
        self._stream, self._handlers, self._buf = stream, handlers, ""

    def write(self, text: str) -> int:
        n = self._stream.write(text)
        self._buf += text
        if "\n" in self._buf:
            *lines, self._buf = self._buf.split("\n")
            for line in lines:
                line = line.rsplit("\r", 1)[-1].rstrip()
                if line.strip():
                    _log(line, self._handlers)
        if len(self._buf) > 1 << 16:  # a bar that never ends its line: keep its last state only
            self._buf = self._buf.rsplit("\r", 1)[-1][-4096:]
        return n

    def flush(self) -> None:
        self._stream.flush()

    def close_line(self) -> None:
        line = self._buf.rsplit("\r", 1)[-1].rstrip()
        if line.strip():
            _log(line, self._handlers)
        self._buf = ""

    def __getattr__(self, name: str) -> Any:  # isatty, fileno, encoding, ... as the real stream's
        return getattr(self._stream, name)


@contextmanager
def to_job_log() -> Iterator[None]:
    """Within: stdout and stderr lines also go to Hydra's log file of the current job (if it has one)."""
    handlers = _file_handlers()
    if not handlers:
        yield
        return
    out, err = sys.stdout, sys.stderr
    tees = [_Tee(out, handlers), _Tee(err, handlers)]
    sys.stdout, sys.stderr = tees  # type: ignore[assignment]
    try:
        yield
    finally:
        sys.stdout, sys.stderr = out, err
        for t in tees:
            t.close_line()
