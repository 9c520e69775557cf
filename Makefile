# Two commands on a fresh machine: `make demo` and `make test`. Both create .venv when missing.
VENV   ?= .venv
PY      = $(VENV)/bin/python
HARNESS = $(VENV)/bin/harness
# torch 2.13.0 is the CPU build available offline on these machines; the pin in pyproject
# admits it, so installing the project afterwards pulls no second (CUDA) build.
TORCH  ?= torch==2.13.0

.PHONY: demo test install bench reference reference-kv bench-kv clean

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

# The committed kv_compression records (zoo:tiny-llama, every kv method x budgets 0.1-0.75, 512 and 2048
# tokens; small limits so that it finishes niced on a shared CPU).
KV_METHODS = snapkv streaming_llm h2o kivi scissorhands fastgen vatp keyformer cam kvmerger gear kivi+intactkv svd_kv
reference-kv: install
	for L in 512 2048; do for M in $(KV_METHODS); do \
	    nice -n 10 $(HARNESS) eval --method $$M --task kv_compression --task-arg context_length=$$L \
	        --task-arg timing_lengths=$$L --task-arg ppl_decode_tokens=32 --task-arg timing_new_tokens=8 \
	        --task-arg max_new_tokens=10 --limit 2 --out results --no-progress || exit 1; done; done

bench-kv: install
	nice -n 10 $(PY) benchmarks/kv_decode.py --context 16384 --budget 0.1

bench: install
	$(PY) benchmarks/overhead.py

clean:
	rm -rf out .pytest_cache
