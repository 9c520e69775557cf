"""Bridge to EleutherAI's lm-evaluation-harness (lm-eval), both ways.

- `harness eval --task lm_eval:<task or group>` runs lm-eval's evaluator on the harness's model with
  the cell's methods applied (family.py, _task.py, _adapter.py).
- `lm_eval --model harness --model_args model=zoo:tiny-llama,method=yarn` runs lm-eval's own CLI on
  a harness model with harness methods applied (_model.py; found through _hook.py, or
  `python -m harness.tasks.lm_eval`).

This package file stays import-light on purpose: the interpreter-start hook (_hook.py) lives
under it, and lm-eval itself (about a second to import) is imported only when a bridge runs."""
