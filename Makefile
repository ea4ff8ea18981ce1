# One command sets up and runs the main job (`make demo`); one sets up and runs the tests (`make test`).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# The torch build to install; override for another platform, e.g. TORCH="torch torchvision".
TORCH  ?= torch==2.14.1 torchvision==0.29.1
STAMP  := $(VENV)/.twinnet-installed
RUNS   ?= runs

.PHONY: setup demo test test-unit lint docs bench clean check-java

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install $(TORCH)
	$(BIN)/python -m pip install -e '.[all]'
	@touch $(STAMP)

check-java:
	@command -v java >/dev/null 2>&1 || { echo "TorchServe needs Java 17: sudo apt-get install openjdk-17-jre-headless" >&2; exit 1; }

# Offline main job: train a twin network (cosine head) from scratch on scikit-learn's handwritten
# digits (a real dataset that ships with a dependency) with 3 digits held out of training, fit
# its threshold on them, evaluate it on those unseen digits, show it.
demo: $(STAMP)
	$(BIN)/twinnet train --dataset digits --out $(RUNS)/digits --arch resnet18 --size 32 \
		--no-pretrained --frozen-epochs 0 --epochs 10 --lr 3e-3 --bs 32 --split classes \
		--valid-pct 0.3 --no-aug --seed 0
	$(BIN)/twinnet evaluate $(RUNS)/digits --dataset digits --held-out --pairs 2000 --way 3 --trials 400
	$(BIN)/twinnet info $(RUNS)/digits
	@echo "model directory: $(RUNS)/digits"

# Everything: the architecture contract, the docs site (warnings are errors), then every test.
test: $(STAMP) check-java
	$(BIN)/lint-imports
	$(MAKE) docs
	$(BIN)/python -m pytest

test-unit: $(STAMP)
	$(BIN)/python -m pytest -m unit

lint: $(STAMP)
	$(BIN)/ruff check src tests bench docs/conf.py
	$(BIN)/ruff format --check src tests bench docs/conf.py
	$(BIN)/lint-imports

# The documentation site, from docs/ (MyST Markdown) and the docstrings, into docs/_build/html.
docs: $(STAMP)
	rm -rf docs/_api
	$(BIN)/sphinx-build -q -W --keep-going -b html docs docs/_build/html

bench: $(STAMP)
	$(BIN)/python bench/train_speed.py
	$(BIN)/python bench/inference_speed.py
	$(BIN)/python bench/serve_load.py
	$(BIN)/python bench/verification.py
	$(BIN)/python bench/soak.py

clean:
	rm -rf $(RUNS) .pytest_cache docs/_build docs/_api
