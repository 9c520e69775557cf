"""The weights manifest (tasks/weights.toml): it names every backbone file a registered task loads
and only those, the tasks' modules name no file themselves, a file whose sha256 differs from the
published one is refused with exit 2 (weights_sha256 overrides), and `harness weights` reports a
weights folder. Fake files only: no real weights, no network."""

import hashlib
import json
import re
from pathlib import Path

import pytest

from harness import registry
from harness.cli import main
from harness.errors import UserError
from harness.tasks import _weights as w

TASKS_DIR = Path(w.__file__).parent


def test_manifest_and_the_registered_tasks_name_the_same_files():
    manifest = w.manifest()
    tasks = registry.all_tasks()
    declared = {name: getattr(cls, "weight_files", ()) for name, cls in tasks.items()}
    for name, keys in declared.items():
        for key in keys:
            assert key in manifest, f"{name} loads {key}, which tasks/weights.toml does not list"
            assert name in manifest[key].tasks, f"tasks/weights.toml [{key}] does not list {name}"
    for key, spec in manifest.items():
        for name in spec.tasks:
            assert name in tasks, f"[{key}] lists {name}, which is not a registered task"
            assert key in declared[name], f"[{key}] lists {name}, whose weight_files {declared[name]} lack it"
    assert sum(1 for keys in declared.values() if keys) >= 13  # every backbone dimension + fvd + camera motion


def test_manifest_entries_are_complete():
    specs = list(w.manifest().values())
    assert len({s.file for s in specs}) == len(specs)  # one entry per file
    for s in specs:
        assert s.file and s.tasks and s.model and s.source, s.key
        assert re.fullmatch(r"([0-9a-f]{64})?", s.sha256), s.key
        assert re.fullmatch(r"([0-9a-f]{8,63})?", s.sha256_prefix), s.key
        assert s.sha256 or s.sha256_prefix or "no hash published" in s.note, f"{s.key}: say that none is published"
        if s.sha256_prefix:  # torch.hub's naming: the prefix is part of the released file name
            assert f"-{s.sha256_prefix}." in s.file
    # OpenAI's download URLs carry the file's sha256 (openai/CLIP checks it): the manifest copies it
    for key in ("clip_vit_b32_openai", "clip_vit_l14_openai"):
        spec = w.entry(key)
        assert spec.source.split("/")[-2] == spec.sha256 and spec.source.endswith("/" + spec.file)


def test_no_task_module_names_a_manifest_file():
    names = [s.file for s in w.manifest().values()]
    for path in sorted(TASKS_DIR.rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        assert not [n for n in names if n in text], f"{path.name} names a weights file: read it from the manifest"


def test_published_hash_checks():
    full = w.WeightsFile("k", "a.pt", ("t",), "m", "s", sha256="ab" * 32)
    prefix = w.WeightsFile("k", "a-12ab34cd.pt", ("t",), "m", "s", sha256_prefix="12ab34cd")
    none = w.WeightsFile("k", "a.pt", ("t",), "m", "s")
    assert full.agrees("ab" * 32) and full.agrees("ab" * 31 + "ac") is False
    assert prefix.agrees("12ab34cd" + "0" * 56) and prefix.agrees("12ab34ce" + "0" * 56) is False
    assert none.agrees("0" * 64) is None


def _fake(folder: Path, key: str, data: bytes = b"not the released weights") -> tuple[Path, str]:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / w.file_of(key)
    path.write_bytes(data)
    return path, hashlib.sha256(data).hexdigest()


def test_mismatching_file_is_refused_unless_weights_sha256_vouches_for_it(tmp_path):
    path, sha = _fake(tmp_path, "raft_large_things")  # torchvision's published prefix 22a6c225
    with pytest.raises(UserError, match=f"{sha}.*starting 22a6c225.*weights_sha256={sha}"):
        w.locate("vbench_dynamic_degree", str(tmp_path), "raft_large_things", "", False)
    found, facts = w.locate("vbench_dynamic_degree", str(tmp_path), "raft_large_things", sha, False)
    assert found == path and facts["weights_sha256"] == sha and facts["sha256_checked"] == "weights_sha256"
    with pytest.raises(UserError, match="expected"):  # the override is itself checked
        w.locate("vbench_dynamic_degree", str(tmp_path), "raft_large_things", "0" * 64, False)
    _, sha = _fake(tmp_path, "dino_vitb16")  # no hash published: recorded, not checked
    assert w.locate("vbench_subject_consistency", str(tmp_path), "dino_vitb16", "", False)[1]["sha256_checked"] == (
        "none published"
    )
    with pytest.raises(ValueError, match="does not list task fvd"):  # a task asking for a file it did not declare
        w.locate("fvd", str(tmp_path), "dino_vitb16", "", False)


def test_cli_refuses_a_mismatching_clip_file_with_exit_2(tmp_path, capsys):
    _, sha = _fake(tmp_path / "w", "clip_vit_b32_openai")
    argv = ["eval", "--task", "vbench_background_consistency", "--method", "synthetic_videos", "--out", str(tmp_path)]
    argv += ["--no-progress", "--method-arg", "motions=static", "--method-arg", "per_motion=1"]
    argv += ["--method-arg", "frames=2", "--method-arg", "size=32", "--task-arg", f"weights_dir={tmp_path / 'w'}"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert f"has sha256 {sha}, but the published ViT-B-32.pt has sha256 40d36571" in err
    assert f"weights_sha256={sha}" in err and "openaipublic.azureedge.net" in err
    # vouched for, the file passes the hash check and fails where a non-checkpoint fails: still one line, exit 2
    assert main(argv + ["--task-arg", f"weights_sha256={sha}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "published" not in err


def test_cli_weights_table_on_a_folder_with_one_fake_file(tmp_path, capsys):
    _fake(tmp_path, "dino_vitb16")
    assert main(["weights", "--weights-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line for line in out.splitlines() if line.split() and "." in line.split()[0]}
    assert set(rows) >= {s.file for s in w.manifest().values()}
    dino = rows["dino_vitbase16_pretrain.pth"]
    assert re.search(
        r"vbench_i2v_subject, vbench_subject_consistency\s+yes\s+unknown\s+https://dl.fbaipublicfiles", dino
    )
    assert re.search(r"\s+no\s+-\s+https://openaipublic", rows["ViT-B-32.pt"])
    # a second, mismatching file: MISMATCH, named below the table, exit 1
    _, sha = _fake(tmp_path, "clip_vit_b32_openai")
    assert main(["weights", "--weights-dir", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert re.search(r"ViT-B-32.pt\s+.*\s+yes\s+MISMATCH\s+", out) and f"has sha256 {sha}" in out
    assert main(["weights", "--weights-dir", str(tmp_path), "--json"]) == 1
    rows = {r["key"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["clip_vit_b32_openai"]["check"] == "MISMATCH" and rows["dino_vitb16"]["check"] == "unknown"
    assert rows["raft_large_things"]["found"] is False and rows["raft_large_things"]["check"] == ""
