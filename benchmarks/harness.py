"""What the benchmark scripts share: the repository root on sys.path and the common command-line arguments."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def common_args(ap: Any) -> Any:
    """The arguments every benchmark takes; returns the parsed args with `device` resolved and `out` created."""
    import torch

    ap.add_argument("--quick", action="store_true", help="tiny random models (CPU smoke test)")
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    args.device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    args.out = Path(args.out)
    args.out.mkdir(parents=True, exist_ok=True)
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    print(f"device: {name}, torch {torch.__version__}", flush=True)
    return args
