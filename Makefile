# Guided Synthesis: `make run` serves ComfyUI with this pack; `make test` runs the whole suite.
PORT ?= 8188
VENV := .venv
PY := $(VENV)/bin/python
HOST = $(shell cat $(VENV)/.gs-setup/host_path 2>/dev/null)
CPU_FLAG = $(shell $(PY) -c "import torch,sys; sys.stdout.write('' if torch.cuda.is_available() else '--cpu')" 2>/dev/null)

.PHONY: setup setup-test validate run test test-fast test-perturbed bench mutate mutate-nodes clean

setup:
	bash scripts/setup.sh

setup-test:
	WITH_TEST_DEPS=1 bash scripts/setup.sh

run: setup
	cd "$(HOST)" && "$(CURDIR)/$(PY)" main.py --listen 127.0.0.1 --port $(PORT) $(CPU_FLAG)

# comfy-cli's publishing check, offline (HOME points at a scratch folder: comfy-cli writes its config there)
COMFY_CLI = $(VENV)/tools/comfy-cli/bin/comfy
validate: setup-test
	HOME="$(CURDIR)/$(VENV)/tools/home" $(COMFY_CLI) --skip-prompt node validate

test: setup-test validate
	$(PY) -m pytest tests -ra

test-fast: setup-test
	$(PY) -m pytest tests -ra -m "not server"

# The numeric tests under perturbations that change rounding (thread count, CPU kernel level, oneDNN off, flushed
# denormals): a tolerance too tight for another CPU fails here first. Slow (the numeric files once per
# perturbation); narrow with PERTURB_TESTS="tests/oracles" or PERTURBATIONS="threads1 nomkldnn".
test-perturbed: setup-test
	PY=$(PY) PERTURB_TESTS="$(PERTURB_TESTS)" PERTURBATIONS="$(PERTURBATIONS)" bash scripts/test_perturbed.sh

bench: setup-test
	SECTIONS="$(SECTIONS)" $(PY) -m bench

# Mutation testing of guidance/ (mutmut, [tool.mutmut] in pyproject.toml); slow, not part of `make test`.
mutate: setup-test
	$(PY) -m pip install --disable-pip-version-check -q "mutmut==3.8.1"
	# one torch thread per mutant process: forked workers whose torch threads spin on a busy 2-core machine
	# use up mutmut's CPU-time limit and are recorded as timeouts though the tests fail at once
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(PY) -m mutmut run --max-children 2 || true
	$(PY) scripts/mutation_score.py

# Sampled mutation testing of the method modules of nodes/ against their graph tests (slow: about a minute per
# mutant on 2 cores). Run it in a worktree of its own: each mutant is written into the file, then reverted.
PER_MODULE ?= 8
mutate-nodes: setup-test
	$(PY) scripts/mutate_nodes.py --per-module $(PER_MODULE)

clean:
	rm -rf $(VENV) .comfyui .pytest_cache test-artifacts mutants
