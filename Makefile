# The two commands a new user runs: `make demo` and `make test`. Both set up everything
# on a fresh machine: a virtual environment, the CPU torch, the package and Graphviz's dot.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
BIN    := $(VENV)/bin
TORCH  ?= torch==2.13.0
SPEC   ?= specs/resnet50.yaml

.PHONY: setup demo test bench fuzz clean dot

setup: $(VENV)/.installed dot

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# CPU build from this machine's disk; installed before the package so the
	# package's torch requirement is already met and no CUDA build is pulled.
	$(PY) -m pip install --quiet $(TORCH)
	$(PY) -m pip install --quiet -e '.[test]'
	# bytecode for the (editable) package now: with PYTHONDONTWRITEBYTECODE set, as on this
	# machine, every `graphres` process would otherwise compile it again (0.1 s each)
	$(PY) -m compileall -q graphres
	touch $@

dot:
	@command -v dot >/dev/null 2>&1 || { \
	  echo "Graphviz 'dot' not found: installing it (apt-get install -y graphviz)"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq graphviz >/dev/null; }
	@dot -V

demo: setup
	mkdir -p build
	$(BIN)/graphres validate $(SPEC)
	$(BIN)/graphres info $(SPEC)
	$(BIN)/graphres expand specs/mmdet_faster_rcnn_r50.yaml
	$(BIN)/graphres render $(SPEC) -o build/resnet50.svg
	$(BIN)/graphres compile $(SPEC) -o build/resnet50.pt2
	$(BIN)/graphres compile $(SPEC) -o build/resnet50.py
	$(PY) build/resnet50.py
	$(PY) -c "import graphres; m = graphres.build('$(SPEC)'); print(m.feature_info)"
	$(PY) -c "import torch; p = torch.export.load('build/resnet50.pt2'); print([tuple(t.shape) for t in p.module()(torch.randn(1, 3, 224, 224))])"

test: setup
	$(PY) -m pytest -q

# 100,000 hostile specs through validate, in-process, with a random seed (printed, so a run can be
# repeated with --seed); minimal reproducers of new crashes go to build/fuzz-crashes/.
FUZZ_CASES ?= 100000
fuzz: setup
	$(PY) tools/fuzz.py --cases $(FUZZ_CASES) --crash-dir build/fuzz-crashes

bench: setup
	$(PY) benchmarks/forward.py

clean:
	rm -rf build .pytest_cache
