# Two commands on a fresh machine: `make demo` and `make test`. Both create .venv when missing.
VENV   ?= .venv
PY      = $(VENV)/bin/python
HARNESS = $(VENV)/bin/harness
# torch 2.13.0 is the CPU build available offline on these machines; the pin in pyproject
# admits it, so installing the project afterwards pulls no second (CUDA) build.
TORCH  ?= torch==2.13.0

.PHONY: demo test install bench reference prm-reference clean

$(VENV)/.installed: pyproject.toml setup.py
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(HARNESS) eval --task needle --task-arg context_length=512 \
	    --method baseline --out out/demo
	$(HARNESS) eval --task needle_1k --method baseline --method pi --method ntk \
	    --method dynamic_ntk --method yarn --out out/demo

test: install
	$(PY) -m pytest -q -p no:cacheprovider

# The committed reference records in results/ (zoo:tiny-llama, long-context family).
LC_METHODS = --method baseline --method pi --method ntk --method dynamic_ntk --method yarn \
             --method llama3 --method selfextend --method dca --method longrope
LENGTHS    = context_length=512,1024,2048 --task-arg samples_per_depth=5
reference: install
	$(HARNESS) fit --method longrope --task needle --task-arg context_length=512,1024,2048   # one artifact for every 2048-token task
	$(HARNESS) eval --task needle --task-arg $(LENGTHS) $(LC_METHODS) --out results
	$(HARNESS) eval --task passkey --task-arg context_length=512,1024,2048 $(LC_METHODS) --out results
	$(HARNESS) eval --task perplexity --task-arg context_length=512,1024,2048 $(LC_METHODS) --out results

# The committed math_prm_bon curves (synthetic math world, 200 problems x 64 samples): fit the
# world PRMs, evaluate every scorer and aggregation, draw the plot.
PRM_AGGS   = min product last mean
PRM_BIG    = --method-arg estimation=soft --method-arg read_problem=true --method-arg epochs=8
PRM_FITTED = "math_shepherd --method-arg estimation=hard" "math_shepherd --method-arg estimation=soft" pav pqm
prm-reference: install
	for m in $(PRM_FITTED) orm; do nice -n 10 $(HARNESS) fit --method $$m || exit 1; done
	nice -n 10 $(HARNESS) eval --task math_prm_bon --method majority --out results
	for m in $(PRM_FITTED); do for a in $(PRM_AGGS); do \
	    nice -n 10 $(HARNESS) eval --task math_prm_bon --method $$m --method-arg agg=$$a --out results || exit 1; done; done
	nice -n 10 $(HARNESS) eval --task math_prm_bon --method orm --out results
	nice -n 10 $(HARNESS) eval --task math_prm_bon --method precomputed --method-arg key=oracle_steps --method-arg agg=min --out results
	nice -n 10 $(HARNESS) fit --method math_shepherd $(PRM_BIG)
	for a in min last; do nice -n 10 $(HARNESS) eval --task math_prm_bon --method math_shepherd $(PRM_BIG) \
	    --method-arg agg=$$a --out results || exit 1; done
	nice -n 10 $(HARNESS) fit --method beam_search --method-arg prm_args=estimation=soft
	nice -n 10 $(HARNESS) eval --task math_prm_bon --method beam_search --method-arg prm_args=estimation=soft \
	    --task-arg n_max=16 --out results
	$(PY) -m pip install -q "matplotlib==3.11.2" && $(PY) scripts/prm_curves.py results --png results/math_prm_bon/curves.png

bench: install
	$(PY) benchmarks/overhead.py

clean:
	rm -rf out .pytest_cache
