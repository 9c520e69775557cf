"""`python -m harness.tasks.lm_eval ARGS` = `lm_eval ARGS` with the `harness` model registered.

For environments where the .pth hook does not run (python -S, an install without it); user
mistakes in the harness model's arguments exit 2 with one line, as in `harness eval`."""

import sys

from harness.errors import NoEffect, UserError


def main() -> int:
    from lm_eval.__main__ import cli_evaluate
    import harness.tasks.lm_eval._model  # noqa: F401  (registers --model harness)

    try:
        cli_evaluate()
    except UserError as e:
        print(f"lm_eval (harness): error: {e}", file=sys.stderr)
        return 2
    except NoEffect as e:
        print(f"lm_eval (harness): failed: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
