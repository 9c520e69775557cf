"""Record text is inert in the leaderboard (issue 21, item 4): a method, family, model label, metric
or parameter value carrying Markdown or HTML is shown as its literal text everywhere, including the
ranking tables (st.table renders Markdown in its cells and headers)."""

import re

from tests.leaderboard_data import EVIL, boards, label, metric, put, record
from tests.test_leaderboard_app import app_test

# EVIL's Markdown and HTML left live (not backslash-escaped): its tag, its link, its emphasis
LIVE = re.compile(r"(?<!\\)(<img|\]\(javascript|\*\*bold)")


def _live_text(at) -> list[str]:
    found = []
    for kind in ("title", "header", "subheader", "caption", "markdown", "warning", "info"):
        found += [str(e.value) for e in getattr(at, kind) if LIVE.search(str(e.value))]
    for t in at.table:
        frame = t.value
        cells = [str(c) for c in [*frame.columns, frame.index.name, *frame.index, *frame.to_numpy().ravel()]]
        found += [c for c in cells if LIVE.search(c)]
    return found


def test_markdown_in_record_text_never_renders_live(tmp_path):
    root = tmp_path / "results"
    for method in (EVIL, "baseline"):
        rec = record(
            "needle",
            method,
            {"accuracy": metric(0.5, sample_field="score"), f"acc{EVIL}": metric(0.25)},
            "accuracy",
            family=EVIL,
            params={"context_length": [512], "note": EVIL},
        )
        rec["model"]["label"] = EVIL
        rec["notes"] = EVIL
        put(root, rec, [{"id": "s0", "score": 1.0, "prediction": EVIL}])
    at = app_test(root)
    ranking = boards(at)
    assert ranking, "the ranking table is drawn"
    assert any("onerror" in label(r) for rows in ranking.values() for r in rows)  # the evil name is shown ...
    assert not _live_text(at)  # ... but never live
    for view in ("task", "run", "compare"):
        at.sidebar.radio(key="view").set_value(view).run()
        assert not at.exception, view
        assert not _live_text(at), view
