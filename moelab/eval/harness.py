"""lm-evaluation-harness's own command line with the `moelab` model registered and moelab's tasks included:

    python -m moelab.eval.harness run --model moelab --model_args "overrides='policy=qhs budget.fraction=0.5'" \\
        --tasks code_line_em --limit 20

(lm-eval has no plugin entry point for models, so `lm_eval --model moelab` alone cannot find it.)
"""

from __future__ import annotations

import sys

from moelab.eval.tasks import OWN_TASKS


def main() -> None:
    from lm_eval.__main__ import cli_evaluate

    import moelab.eval.lm  # noqa: F401  (registers the `moelab` model)

    args = sys.argv[1:]
    if args and args[0] in ("run", "ls", "validate") and "--include_path" not in args:
        args = [*args, "--include_path", str(OWN_TASKS)]
    sys.argv[1:] = args
    cli_evaluate()


if __name__ == "__main__":
    main()
