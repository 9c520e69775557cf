"""Bridge to EleutherAI's lm-evaluation-harness (lm-eval), both ways.

- `harness eval --task lm_eval:<task or group>` runs lm-eval's evaluator on the harness's model with
  the cell's methods applied (family.py, _task.py, _adapter.py).
- `harness lm-eval --model harness --model_args model=zoo:tiny-llama,method=yarn ...` runs lm-eval's
  own CLI on a harness model with harness methods applied (_model.py, __main__.py).

This package file stays import-light on purpose: `harness` loads the `lm-eval` subcommand from
__main__.py at every start, and lm-eval itself (about a second to import) is imported only when a
bridge runs."""
