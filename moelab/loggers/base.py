"""What a results logger does: store one run's row (and its step table) somewhere readers find it."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd


class Logger(ABC):
    """Registry kind `logger`. The runner calls `log_run` exactly once per run, also for a failed run."""

    @abstractmethod
    def log_run(self, row: Mapping[str, Any], steps: pd.DataFrame | None) -> Path:
        """Store the row (and the step table if any); return the file the row went to."""
