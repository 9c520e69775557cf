# Two commands on a fresh machine: `make demo` and `make test`. Both create .venv when missing.
VENV   ?= .venv
PY      = $(VENV)/bin/python
HARNESS = $(VENV)/bin/harness
# torch 2.13.0 is the CPU build available offline on these machines; the pin in pyproject
# admits it, so installing the project afterwards pulls no second (CUDA) build.
TORCH  ?= torch==2.13.0

.PHONY: demo test install bench reference reference-long clean

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

# The longer runs (made on a lent GPU: `make reference-long DEVICE=cuda`; they also run on CPU, slowly).
DEVICE ?= auto
TF_METHODS = --method baseline --method pi --method ntk --method dynamic_ntk --method yarn \
             --method llama3 --method selfextend --method dca
reference-long: install
	$(HARNESS) fit --method longrope --task needle --task-arg context_length=4096,8192 --device $(DEVICE)
	$(HARNESS) eval --task needle --task-arg context_length=4096,8192 --task-arg samples_per_depth=5 $(LC_METHODS) --device $(DEVICE) --out results
	$(HARNESS) eval --task passkey --task-arg context_length=4096,8192 $(LC_METHODS) --device $(DEVICE) --out results
	$(HARNESS) eval --task perplexity --task-arg context_length=4096,8192 $(LC_METHODS) --device $(DEVICE) --out results
	$(HARNESS) eval --task needle --task-arg context_length=32768 --task-arg samples_per_depth=1 $(TF_METHODS) --device $(DEVICE) --out results
	for t in needle passkey perplexity; do $(HARNESS) eval --model zoo:tiny-llama-alibi --method alibi --task $$t \
	    --task-arg context_length=512,1024,2048,4096,8192 $$( [ $$t = needle ] && echo --task-arg samples_per_depth=5 ) \
	    --device $(DEVICE) --out results; done
	$(HARNESS) report --task needle --model zoo:tiny-llama --heatmaps docs/needle_heatmaps_tiny_llama.png

bench: install
	$(PY) benchmarks/overhead.py

clean:
	rm -rf out .pytest_cache
