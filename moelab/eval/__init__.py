"""Task accuracy through lm-evaluation-harness: moelab as an lm-eval model, every request through the executor.

`python -m moelab.eval eval.tasks=[...] <overrides>` (or `eval.tasks=...` on any `run.py` run) scores the
tasks after the run's timed pass and puts `task_score.<task>.<metric>` into its row; `lm_eval --model moelab
--model_args overrides=...` uses the same model from lm-eval's own command line.
"""
