"""The shipped prompt suites (tasks/prompts/): the files are the recorded ones, licensed for
redistribution, and read as the benchmarks define them; the coverage table has no silent gap."""

import hashlib
import json

import pytest

from harness import registry
from harness.tasks import _coverage, _prompt_suites as suites

# VBench_full_info.json's per-dimension counts at the shipped commit (shared/reference/anchors-video.md)
VBENCH_COUNTS = {
    "subject_consistency": 72,
    "background_consistency": 86,
    "temporal_flickering": 75,
    "motion_smoothness": 72,
    "dynamic_degree": 72,
    "aesthetic_quality": 93,
    "imaging_quality": 93,
    "object_class": 79,
    "multiple_objects": 82,
    "human_action": 100,
    "color": 85,
    "spatial_relationship": 84,
    "scene": 86,
    "appearance_style": 90,
    "temporal_style": 100,
    "overall_consistency": 93,
}


@pytest.mark.parametrize("suite", ["vbench", "chronomagic"])
def test_files_match_their_recorded_source_and_licence(suite):
    src = suites.sources()[suite]
    folder = suites.ROOT / suite
    on_disk = {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}
    assert on_disk == set(src["files"]), "a shipped file is missing from SOURCES.json or the other way round"
    for name, sha in src["files"].items():
        assert hashlib.sha256((folder / name).read_bytes()).hexdigest() == sha, name
    assert "Apache License" in (folder / "LICENSE").read_text() and src["licence"].startswith("Apache-2.0")
    assert len(src["snapshot_commit"]) == 40 and src["repository"].startswith("https://github.com/")


@pytest.mark.parametrize("dimension,count", sorted(VBENCH_COUNTS.items()))
def test_vbench_lists_agree_with_the_full_info_file(dimension, count):
    prompts = suites.vbench_prompts(dimension)
    assert len(prompts) == count
    full = json.loads((suites.ROOT / "vbench" / "VBench_full_info.json").read_text())
    tagged = [e["prompt_en"] for e in full if dimension in e["dimension"]]
    assert [p.text for p in prompts] == tagged  # the list file and the full-info file agree, in order
    assert all(dimension in p.meta["dimension"] for p in prompts)


def test_auxiliary_info_reaches_the_prompts():
    color = suites.vbench_prompts("color")
    assert all("color" in p.meta["auxiliary_info"] for p in color)
    aux = suites.vbench_prompts("spatial_relationship")[0].meta["auxiliary_info"]
    assert set(aux["spatial_relationship"]["spatial_relationship"]) == {"object_a", "object_b", "relationship"}


def test_chronomagic_captions():
    full, small = suites.chronomagic_prompts("1649"), suites.chronomagic_prompts("150")
    assert len(full) == 1649 and len(small) == 150
    assert len({p.id for p in full}) == 1649 and all(p.text.strip() for p in full)
    # the four main categories; 23 "glass" rows have an empty main_category in the source file itself
    cats = {p.meta["main_category"] for p in full}
    assert cats == {"biological", "human_creation", "meteorological", "physical", ""}
    with pytest.raises(Exception, match="1649 or 150|one of 1649, 150"):
        suites.chronomagic_prompts("200")


def test_coverage_table_lists_every_dimension_and_gpt4o_as_unavailable():
    rows = _coverage.rows()
    vbench = [r["dimension"] for r in rows if r["benchmark"] == "vbench"]
    assert set(vbench) == set(VBENCH_COUNTS)
    gpt = [r for r in rows if r["dimension"] == "gpt4o_mtscore"]
    assert len(gpt) == 1 and gpt[0]["status"] == "unavailable" and "hosted" in gpt[0]["reason"]
    assert all(r["status"] in ("faithful", "proxy", "external", "unavailable") for r in rows)
    # each task that names a benchmark dimension appears in the table
    registry.load()
    named = {c.name for c in registry.TASKS.values() if getattr(c, "benchmark_dimension", None)}
    assert named == {r["task"] for r in rows if r["task"]}
