"""The process `harness leaderboard` becomes: Streamlit's own `streamlit run` command line, after
starting, in a background thread, what the first visitor would otherwise wait for — the parse of
the results folder (loader.preload; the app's cached loader takes the result once) and then the
imports of the views after the overview (pandas, altair). The server starts at once; a visitor who
arrives before the thread has finished waits only for the rest.

    python -m harness.leaderboard.serve run APP [streamlit options]   (HARNESS_RESULTS: the folder)
"""

from __future__ import annotations

import os
import sys


def _warm(results: str) -> None:
    try:
        from harness.leaderboard import loader, tables  # noqa: F401

        loader.preload(results)  # what the overview needs first
        import altair  # noqa: F401  (the task and compare views' charts)
        import pandas  # noqa: F401  (their frames)
    except Exception:  # the app loads (and reports) on its own; warming is only a head start
        pass


def main(argv: list[str]) -> None:
    results = os.environ.get("HARNESS_RESULTS")
    if results:
        from harness.leaderboard import loader

        loader.preload_in_background(results, _warm)
    from streamlit.web import cli

    sys.argv = ["streamlit", *argv]
    cli.main()


if __name__ == "__main__":
    main(sys.argv[1:])
