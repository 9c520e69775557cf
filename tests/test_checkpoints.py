"""Real checkpoints: an uncached hf: id fails at once (no network), loading options reach
transformers, the record and the run id (defaults leave existing run ids alone)."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import transformers

from harness import grid, models, records, runner
from harness.cli import main, parser
from harness.errors import UserError
from harness.loading import LoadOptions

from tests.test_cli import eval_args, run

NEEDLE = {"context_length": "160", "depths": "1", "samples_per_depth": "1", "max_new_tokens": "2"}


def fake_cache(hf_home: Path, repo: str) -> None:
    """A hub cache entry holding only config.json (enough for the cache check, not for loading)."""
    root = hf_home / "hub" / f"models--{repo.replace('/', '--')}"
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text("0" * 40)
    (root / "snapshots" / ("0" * 40)).mkdir(parents=True)
    (root / "snapshots" / ("0" * 40) / "config.json").write_text("{}")


def test_uncached_hf_id_fails_at_once_with_exit_2(tmp_path):
    env = dict(os.environ, HF_HOME=str(tmp_path / "hf"), HF_HUB_OFFLINE="0")
    env.pop("HF_HUB_CACHE", None)
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "harness.cli", "eval", "--task", "needle", "--model", "hf:nobody/not-a-model"]
        + ["--device", "cpu", "--out", str(tmp_path / "o"), "--no-progress"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    wall = time.perf_counter() - t0
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr
    assert "not in the local Hugging Face cache" in lines[0] and str(tmp_path / "hf") in lines[0]
    assert "local folder" in lines[0] and "HF_HOME" in lines[0] and "--allow-download" in lines[0]
    assert wall < 60  # (was 54-115 s of network retries); loose: the machine is shared


def test_cached_hf_id_is_loaded_with_local_files_only(tmp_path, monkeypatch):
    fake_cache(tmp_path / "hf", "nobody/cached")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    seen = []

    def fake_from_pretrained(where, **kwargs):
        seen.append(kwargs)
        raise OSError("stop here")

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", fake_from_pretrained)
    for allow in (False, True):
        with pytest.raises(UserError, match="cannot load model 'hf:nobody/cached': stop here"):
            models.load("hf:nobody/cached", "cpu", options=LoadOptions(allow_download=allow))
    assert [k["local_files_only"] for k in seen] == [True, False]
    # --allow-download skips the cache check: an uncached id goes on to transformers
    with pytest.raises(UserError, match="stop here"):
        models.load("hf:nobody/elsewhere", "cpu", options=LoadOptions(allow_download=True))
    with pytest.raises(UserError, match="not in the local Hugging Face cache"):
        models.identity("hf:nobody/elsewhere")
    calls = len(seen)
    with pytest.raises(UserError, match="not in the local Hugging Face cache"):  # transformers is never asked
        models.load("hf:nobody/elsewhere", "cpu")
    assert len(seen) == calls


@pytest.mark.parametrize("command", ["eval", "fit"])
def test_loading_flags_are_in_help(command):
    sub = next(a for a in parser()._actions if a.dest == "cmd").choices[command]
    text = sub.format_help()
    for flag in (
        "--dtype",
        "--device-map",
        "--load-in-4bit",
        "--load-in-8bit",
        "--attn-implementation",
        "--trust-remote-code",
        "--allow-download",
    ):
        assert flag in text, flag


def test_default_loading_keeps_run_ids_and_each_option_makes_a_new_cell(tiny_model, tmp_path):
    def rid(options):
        cell = runner.resolve(["needle"], ["baseline"], tiny_model, dict(NEEDLE), {}, loading=options)[0]
        config, rid, _ = runner.locate(cell, tmp_path)
        return config, rid

    config, base = rid(None)
    assert "loading" not in config["model"] and rid(LoadOptions())[1] == base
    assert rid(LoadOptions(allow_download=True))[1] == base  # where weights come from is not the cell
    variants = [
        LoadOptions(dtype="bfloat16"),
        LoadOptions(dtype="float16"),
        LoadOptions(device_map="auto"),
        LoadOptions(quantization="4bit"),
        LoadOptions(attn_implementation="eager"),
        LoadOptions(trust_remote_code=True),
    ]
    ids = {rid(v)[1] for v in variants}
    assert len(ids) == len(variants) and base not in ids
    assert rid(LoadOptions(dtype="bfloat16"))[0]["model"]["loading"] == {"dtype": "bfloat16"}


def test_loading_options_reach_the_model_and_the_record(capsys, tiny_model, tmp_path):
    extra = ("--dtype", "bfloat16", "--attn-implementation", "eager", "--device-map", "auto", "--device", "cpu")
    code, _, err = run(capsys, *eval_args(tiny_model, tmp_path, *extra))
    assert code == 0, err
    (path,) = [p for p in tmp_path.rglob("*.json")]
    rec = records.read(path)
    assert rec["model"]["loading"] == {"dtype": "bfloat16", "attn_implementation": "eager", "device_map": "auto"}
    cfg = rec["model"]["config"]
    assert (cfg["dtype"], cfg["attn_implementation"]) == ("bfloat16", "eager")
    assert cfg["device_map"] in (None, ["cpu"])  # accelerate keeps no map when everything fits one device
    # the default run is another cell, in the same folder
    assert run(capsys, *eval_args(tiny_model, tmp_path, "--device", "cpu"))[0] == 0
    assert len(list(tmp_path.rglob("*.json"))) == 2


@pytest.mark.parametrize("flag", ["--load-in-4bit", "--load-in-8bit"])
def test_quantization_without_bitsandbytes_is_one_clear_error(capsys, tiny_model, tmp_path, flag):
    pytest.importorskip("torch")
    if __import__("importlib").util.find_spec("bitsandbytes") is not None:
        pytest.skip("bitsandbytes is installed here")
    code, _, err = run(capsys, *eval_args(tiny_model, tmp_path, flag))
    assert code == 2 and "bitsandbytes" in err and len(err.strip().splitlines()) == 1
    assert not list(tmp_path.rglob("*.json"))


def test_bad_loading_values_exit_2(capsys, tiny_model, tmp_path):
    with pytest.raises(SystemExit) as e:  # argparse's choices
        main(eval_args(tiny_model, tmp_path, "--dtype", "float8"))
    assert e.value.code == 2
    with pytest.raises(SystemExit):
        main(eval_args(tiny_model, tmp_path, "--load-in-4bit", "--load-in-8bit"))
    capsys.readouterr()


def test_grid_loading_block_is_part_of_the_cell(tiny_model, tmp_path, capsys):
    base = {"models": [tiny_model], "runs": [{"tasks": ["needle"], "methods": ["baseline"], "task_args": NEEDLE}]}
    plain, bf16 = tmp_path / "plain.json", tmp_path / "bf16.json"
    plain.write_text(json.dumps(base))
    bf16.write_text(json.dumps(dict(base, loading={"dtype": "bfloat16"})))
    (a,) = grid.expand(grid.load_grid(plain), plain, str(tmp_path / "out"))
    (b,) = grid.expand(grid.load_grid(bf16), bf16, str(tmp_path / "out"))
    assert a.path != b.path and b.loading == {"dtype": "bfloat16"}
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(dict(base, loading={"dtyp": "bfloat16"})))
    assert main(["sweep", str(bad), "--dry-run"]) == 2
    assert "'loading' must be a mapping with keys among" in capsys.readouterr().err
