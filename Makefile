# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

# Offline machines: no telemetry (MLflow wants the string "true").
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export DO_NOT_TRACK := 1
export MLFLOW_DISABLE_TELEMETRY := true

# The demo: small synthetic data, small images, CPU-friendly settings, the recommended `crops` family
# (slices as channels: half the CPU time of the default attention pooling) with a small localiser.
# The seed's full settings (family seed, 224 px, pretrained resnet18, lr 0.01, batch 64, 10 epochs)
# stay the defaults of `spine train`.
DEMO_DATA ?= spine_outputs/demo_data
DEMO_SYNTH ?= --studies 150 --test-studies 20 --image-size 96 --slices 10 --seed 0 --difficulty realistic
DEMO_TRAIN ?= --model-family crops --crop-pooling channels --store-size 96 --crop-size 32 --epochs 4 \
	--lr 0.001 --batch-size 32 --augment --no-pretrained --num-workers 2 --val-fraction 0.2 \
	--localiser-image-size 64 --localiser-epochs 4

.PHONY: demo test test-fast lint bench bench-quality stack stack-pg postgres browser clean-outputs

# The virtual environment, (re)made when missing or when pyproject.toml changes.
$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install -e ".[dev]"
	touch $@

demo: $(VENV)/.installed
	test -f $(DEMO_DATA)/train.csv || $(BIN)/spine synth --out $(DEMO_DATA) $(DEMO_SYNTH)
	$(BIN)/spine train $(DEMO_DATA) $(DEMO_TRAIN)
	$(BIN)/spine predict $(DEMO_DATA) --out spine_outputs/submission.csv

test: $(VENV)/.installed postgres browser
	$(BIN)/python -m pytest

# PostgreSQL's server binaries (Debian's package), for the Postgres-backed stack and its test: installed
# when missing and this is root with apt-get (as on CI); otherwise a note, and that test skips.
postgres:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1 || \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing Debian's postgresql package ..." && apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql >/dev/null; \
	else echo "note: PostgreSQL is not installed (sudo apt-get install postgresql); its test will skip"; fi

# Everything but the real-server integration tests.
test-fast: $(VENV)/.installed
	$(BIN)/python -m pytest -m "not integration"

lint: $(VENV)/.installed
	$(BIN)/ruff check spine_model tasks flows tests benchmarks
	$(BIN)/lint-imports

bench: $(VENV)/.installed
	$(BIN)/python benchmarks/run.py --out benchmarks/RESULTS.md

# Model quality of the families on fixed synthetic data, each configuration an MLflow run (CPU: about an hour).
bench-quality: $(VENV)/.installed
	$(BIN)/python benchmarks/quality.py --out benchmarks/QUALITY.md

# Prefect server, MLflow server, cpu/gpu process workers and the deployments; Ctrl-C stops all.
stack: $(VENV)/.installed
	$(BIN)/spine stack

# Headless Chromium and its driver (Debian's chromium, chromium-driver) for the browser test: installed
# when missing and this is root with apt-get (as on CI); otherwise a note, and that test skips.
browser:
	@test -x /usr/bin/chromium -a -x /usr/bin/chromedriver || \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing Debian's chromium and chromium-driver ..." && apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null; \
	else echo "note: chromium is not installed (sudo apt-get install chromium chromium-driver); the browser test will skip"; fi

# The same on PostgreSQL: a server of the stack's own in .stack/postgres backs Prefect and MLflow.
stack-pg: $(VENV)/.installed postgres
	$(BIN)/spine stack --postgres

clean-outputs:
	rm -rf spine_outputs mlflow.db .stack
