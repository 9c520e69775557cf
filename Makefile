# Two commands on a fresh machine: `make demo` and `make test`. Both create .venv when missing.
# Nothing needs activating: the targets run .venv/bin/harness, which works from any shell as is
# (`make help` lists the targets).
VENV   ?= .venv
# The lowest supported Python, which CI runs: python3.11 when it is on PATH, else python3.
PYTHON ?= $(shell command -v python3.11 >/dev/null 2>&1 && echo python3.11 || echo python3)
PY      = $(VENV)/bin/python
HARNESS = $(VENV)/bin/harness
# torch 2.14.1 with torchvision 0.29.1: the pair whose wheels lie on these machines' disk for
# Python 3.11 (a CUDA build that runs on the CPU), and the newest torchvision pair PyPI serves, which
# open_clip, timm and pyiqa need (PyPI's torchvision does not import beside the 2.13.0 CPU build).
# The pins in pyproject admit exactly these, so installing the project pulls no second build. Under
# another Python pip downloads the same versions from PyPI (~3 GB).
TORCH  ?= torch==2.14.1 torchvision==0.29.1
# pyiqa, whose MUSIQ scores vbench_imaging_quality, goes in without its declared requirements: 0.1.16
# hard-requires bitsandbytes, facexlib (numba, llvmlite), tensorboard, pre-commit, pytest, ruff,
# openai-clip, yapf, datasets, accelerate, ... and pip's resolution of all that beside the pins did
# not finish in 15 minutes on 2 cores. Importing pyiqa.archs.musiq_arch loads only torch,
# torchvision, numpy, cv2, PIL, requests, scipy, yaml, tqdm and huggingface_hub (measured with
# python -X importtime), which pyproject's video extra declares. Older releases are no leaner:
# 0.1.11-0.1.14.1 pin transformers==4.37.2 (the project has 5.2), 0.1.10 imports every
# architecture module (and its packages) on `import pyiqa`.
PYIQA  ?= pyiqa==0.1.16

.PHONY: help demo docs test test-slow gate install list bench bench-leaderboard bench-kv bench-look-m reference reference-long reference-video reference-kv prm-reference prm-reference-v2 leaderboard clean

help:
	@echo "make demo         a 1-minute tour: needle retrieval of 5 RoPE methods on zoo:tiny-llama (out/demo)"
	@echo "make leaderboard  the web leaderboard (RESULTS=out/demo for the demo's records; default results/)"
	@echo "make list         every task, method and model"
	@echo "make test         the test suite without the slow tests (make test-slow: those)"
	@echo "make gate         the CI regression gate against ci/baseline"
	@echo "make lint         ruff over the tree: lint (unused imports, undefined names) and format"
	@echo "make docs         regenerate the docs' generated pages and build the site (out/site)"
	@echo "make install      only the environment (.venv, Python $(PYTHON)); log in .venv/install.log"
	@echo "Anything else: $(HARNESS) --help (no activation needed)"

# pip's and setuptools' output goes to a log, shown only when the install fails
$(VENV)/.installed: pyproject.toml setup.py
	@echo "install: $(VENV) with $(PYTHON) and the project's dependencies (about 1-2 minutes; log: $(VENV)/install.log)"
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@{ $(PY) -m pip install -q --upgrade pip && $(PY) -m pip install -q $(TORCH) && \
	   $(PY) -m pip install -q -e ".[dev]" && $(PY) -m pip install -q --no-deps $(PYIQA); } > $(VENV)/install.log 2>&1 || \
	   { cat $(VENV)/install.log; echo "install failed: see $(VENV)/install.log"; exit 1; }
	@touch $@

install: $(VENV)/.installed

list: install
	@$(HARNESS) list

# The demo's grid is small on purpose (5 depths x 2 samples = 10 needles per cell; 35-40 s on 2
# CPU cores, 1 min 46 s from a fresh clone with the install): the committed results/ use 10 depths
# x 2-5 samples per length.
DEMO_OUT  ?= out/demo
DEMO_GRID  = --task-arg depths=5 --task-arg samples_per_depth=2 --out $(DEMO_OUT)
demo: install
	@echo
	@echo "Demo: needle-in-a-haystack retrieval on zoo:tiny-llama, a 2.6M-parameter Llama trained here on"
	@echo "512-token contexts. It takes about 1 minute on 2 CPU cores (each cell then prints the time left)."
	@echo "  1. baseline at 512 tokens, inside the training length: the model finds the needle."
	@echo "  2. five RoPE methods at 1,024 tokens, twice the training length: baseline (no scaling) loses"
	@echo "     the needle; ntk, dynamic_ntk and yarn rescale the positions and recover most or all of it;"
	@echo "     pi, which its paper pairs with fine-tuning, does not recover it without."
	@echo "Each table row is one cell: value = accuracy, the fraction of the 10 needles retrieved (higher"
	@echo "is better; steps of 0.1, so it differs from the committed tables, which use 20-50 needles per"
	@echo "cell), stderr its standard error, n the needles, time the cell's wall time. These are numbers"
	@echo "for a tiny reference model, not for real LLMs."
	@echo
	@$(HARNESS) eval --task needle --task-arg context_length=512 --method baseline $(DEMO_GRID)
	@echo
	@$(HARNESS) eval --task needle_1k --method baseline --method pi --method ntk \
	    --method dynamic_ntk --method yarn $(DEMO_GRID)
	@echo
	@echo "Next (nothing to activate):"
	@echo "  make leaderboard RESULTS=$(DEMO_OUT)   # these records in the web leaderboard (http://127.0.0.1:8501)"
	@echo "  $(HARNESS) list methods   # every method (make help: the other targets)"
	@echo "  $(HARNESS) eval --task needle_2k --method yarn $(DEMO_GRID)   # one more cell"

# `make test`: the suite without the tests marked slow; `make test-slow`: those (sweep crash safety,
# the killed eval, the leaderboard in Chromium, the Slurm path, the full lm-eval and video ViT
# checks); .ci/run runs both and then the regression gate. The slow tests' reliability figures go to
# benchmarks/results/reliability/ and `harness docs` turns them into docs/reliability.md's table.
test: install
	$(PY) -m pytest -q -p no:cacheprovider -m "not slow"

test-slow: install
	HARNESS_TEST_REPORTS=benchmarks/results/reliability $(PY) -m pytest -q -p no:cacheprovider -m slow
	$(HARNESS) docs

# Lint: pyflakes' checks, syntax errors and ruff's formatter over the whole tree (pyproject's [tool.ruff]).
.PHONY: lint
lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# CI regression gate: re-evaluate the cells of grids/ci_gate.yaml on CPU into a temporary folder
# and compare them with the committed baseline (ci/baseline/, made by the same grid).
gate: install
	rm -rf out/gate
	$(HARNESS) sweep grids/ci_gate.yaml --device cpu --out out/gate
	$(HARNESS) gate --baseline ci/baseline --current out/gate

RESULTS ?= results
leaderboard: install
	$(HARNESS) leaderboard --results $(RESULTS)

# The committed reference records in results/ (zoo:tiny-llama, long-context family): 512-2k, seeds 0-2.
reference: install
	$(HARNESS) sweep grids/long_context.yaml

# The longer runs: 4k-8k on CPU in hours (reference-long); 32k on CPU in about 1.5 h
# (reference-32k); 128k on CPU in 4-6 h, over an hour a cell, resumable (reference-128k); LongRoPE's 4k/8k search wants
# a GPU (`make reference-scale DEVICE=cuda`; it runs on CPU too, slowly).
DEVICE ?= auto
reference-long: install
	OMP_NUM_THREADS=1 nice -n 10 $(HARNESS) sweep grids/long_context_long.yaml --workers 2 --threads 1 --device $(DEVICE)
	$(HARNESS) report --task needle --model zoo:tiny-llama --heatmaps docs/needle_heatmaps_tiny_llama.png

.PHONY: reference-32k reference-128k reference-scale
reference-32k: install
	OMP_NUM_THREADS=1 nice -n 10 $(HARNESS) sweep grids/long_context_32k.yaml --workers 2 --threads 1 --device $(DEVICE)

reference-128k: install
	$(HARNESS) sweep grids/long_context_128k.yaml --device $(DEVICE)

reference-scale: install
	$(HARNESS) sweep grids/long_context_scale.yaml --device $(DEVICE)

# The committed world-v1 math_prm_bon curves (grids/prm.yaml: 200 problems x 64 samples, seed 0; the
# world PRMs, the issue-27 verifiers and every aggregation; GenRM-CoT on its own 50 x 16 pool):
# fit, evaluate, draw the plot.
prm-reference: install
	OMP_NUM_THREADS=1 nice -n 10 $(HARNESS) sweep grids/prm.yaml --workers 2 --threads 1
	$(PY) scripts/prm_curves.py results --model none --world-version 1 --problems 200 --png docs/prm_curves.png

# The world-v2 reference (issue 25): PRMs fine-tuned from zoo:tiny-math on the world policy's pools and on
# pools sampled from zoo:tiny-math, seeds 0-2 (grids/prm_v2.yaml; about an hour on the 2-core CPU), and the
# same PRMs reading tiny-math's token log-probabilities too (grids/prm_v2_logprobs.yaml; about an hour more).
prm-reference-v2: install
	OMP_NUM_THREADS=1 nice -n 10 $(HARNESS) sweep grids/prm_v2.yaml --workers 2 --threads 1
	OMP_NUM_THREADS=1 nice -n 10 $(HARNESS) sweep grids/prm_v2_logprobs.yaml --workers 2 --threads 1
	$(PY) scripts/prm_curves.py results --model none --world-version 2 --png docs/prm_curves_v2.png
	$(PY) scripts/prm_curves.py results --model zoo:tiny-math --world-version 2 --png docs/prm_curves_tiny_math.png

# The committed kv_compression records: the fits, then every cell of grids/kv.yaml (about 1.5 hours niced
# on the shared 2-core CPU; finished cells are skipped when it runs again).
reference-kv: install
	OMP_NUM_THREADS=2 nice -n 10 $(HARNESS) sweep grids/kv.yaml --workers 1 --threads 2

# LOOK-M's mechanism on a tiny random LLaVA: which kept slots are image tokens (seconds)
bench-look-m: install
	$(PY) benchmarks/look_m_mechanism.py --json benchmarks/results/look_m_tiny_llava.json

bench-kv: install
	nice -n 10 $(PY) benchmarks/kv_decode.py --context 16384 --budget 0.1 --json benchmarks/results/kv_decode_cpu.json

bench: install
	$(PY) benchmarks/overhead.py

# load + overview in-process (AppTest), then the time to first paint in headless Chromium (Debian's
# chromium; the figures and the machine's load go to benchmarks/results/leaderboard_paint.json)
bench-leaderboard: install
	$(PY) benchmarks/leaderboard_load.py
	$(PY) benchmarks/leaderboard_paint.py --json benchmarks/results/leaderboard_paint.json

clean:
	rm -rf out .pytest_cache

# Video reference records (no model, no weights): every noise prior under noise_prior, and the
# built-in synthetic videos under every weight-free video dimension (proxies labelled as such).
NOISE_PRIORS = independent fixed pyoco_mixed pyoco_progressive videofusion freenoise integral_noise \
               bilinear_warp nearest_warp analytic_init
VIDEO_TASKS  = --task vbench_temporal_flickering --task vbench_dynamic_degree_proxy \
               --task vbench_motion_smoothness_proxy --task vbench_camera_motion_proxy --task vbench
reference-video: install
	$(HARNESS) eval --task noise_prior $(foreach m,$(NOISE_PRIORS),--method $(m)) --out results --no-progress
	$(HARNESS) eval $(VIDEO_TASKS) --method synthetic_videos --out results --no-progress
	$(HARNESS) eval --task vbench --task-arg proxies=true --method synthetic_videos --out results --no-progress
	$(HARNESS) eval --task chronomagic_chscore --task-arg tracker=lk --method synthetic_videos --out results --no-progress
	$(HARNESS) eval --task vbench_temporal_flickering --method synthetic_videos --method-arg motions=static \
	    --method-arg flicker=0.02 --out results --no-progress
	$(HARNESS) eval --task vbench_object_class --task vbench_multiple_objects --task vbench_color \
	    --task vbench_spatial_relationship --task vbench_scene --task-arg backend=synthetic_oracle \
	    --method synthetic_scenes --out results --no-progress

# The committed spec_acceptance records: the default EAGLE and DistillSpec fits, then every
# speculative method on the zoo pair (grids/spec.yaml; 8 prompts x 32 tokens at T=0 and T=1).
.PHONY: reference-spec bench-spec
reference-spec: install
	OMP_NUM_THREADS=1 nice -n 10 $(HARNESS) sweep grids/spec.yaml --workers 1 --threads 1

bench-spec: install
	nice -n 10 $(PY) benchmarks/spec_speed.py --prompts 8 --new-tokens 64 --repeats 3

# The fine-tuned long-context methods after their default fits (about 3.5 CPU minutes each at one
# thread), then needle / passkey / perplexity at 512-8k (grids/long_context_finetuned.yaml).
.PHONY: reference-finetuned
reference-finetuned: install
	OMP_NUM_THREADS=1 nice -n 10 $(HARNESS) sweep grids/long_context_finetuned.yaml --workers 1 --threads 1

# The docs site: regenerate its generated pages (CLI, tasks, methods, coverage and result tables,
# the README's tour table) from the parser, the registry and results/, then build it strictly into
# out/site/ (ignored). tests/test_docs.py fails when the committed pages differ from a regeneration.
.PHONY: docs
docs: install
	$(HARNESS) docs
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict -d out/site
