"""`harness lm-eval ARGS` (or `python -m harness.tasks.lm_eval ARGS`) = lm-eval's own CLI,
`lm_eval ARGS`, with the model `harness` registered: harness models and methods inside lm-eval.

lm-eval 0.4.13 finds models only in its own registry and loads no plugins, so the registration is
explicit: this command imports _model.py (whose `@register_model("harness")` adds it) and then runs
lm-eval's CLI. `harness lm-eval` is added to the harness CLI through the entry point group
`harness.commands` (pyproject.toml); nothing runs at interpreter start. User mistakes in the harness
model's arguments exit 2 with one line, as in `harness eval`."""

import sys

from harness.errors import NoEffect, UserError

HELP = "lm-eval's own CLI with --model harness registered (arguments go to lm_eval; try --help)"


def add_command(sub) -> None:
    """Entry point (group harness.commands): `harness lm-eval ...`; every argument goes to lm-eval
    (the parser passes them through as `a.passthrough`)."""
    p = sub.add_parser("lm-eval", help=HELP, description=HELP, add_help=False)
    p.set_defaults(fn=lambda a: main(a.passthrough), passthrough=[])


def main(argv: list[str] | None = None) -> int:
    from lm_eval.__main__ import cli_evaluate

    import harness.tasks.lm_eval._model  # noqa: F401  (registers --model harness)

    sys.argv = ["lm_eval", *(sys.argv[1:] if argv is None else argv)]
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
