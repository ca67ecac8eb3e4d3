"""Task accuracy through lm-evaluation-harness: moelab as an lm-eval model, every request through the executor.

`python -m moelab.eval eval.tasks=[...] <overrides>` (or `eval.tasks=...` on any `run.py` run) scores the
tasks after the run's timed pass and puts `task_score.<task>.<metric>` into its row;
`python -m moelab.eval.harness run --model moelab --model_args overrides=...` is lm-eval's own command line
with the same model.
"""
