# The two set-up commands: `make demo` and `make test`. Each installs what it needs into .venv.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Offline machines keep a copy of the demo data beside the project; elsewhere it downloads.
DEMO_COPY := $(wildcard ../shared/datasets/hymenoptera_data)

.PHONY: demo test install lint clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# torch and torchvision first: pip takes them from the machine's local wheels.
	$(BIN)/python -m pip install --quiet --disable-pip-version-check "torch==2.14.1" "torchvision==0.29.1"
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/tlpipe demo-data $(if $(DEMO_COPY),--from $(DEMO_COPY))
	$(BIN)/tlpipe run
	@echo "Browse the run: $(BIN)/mlflow ui --backend-store-uri sqlite:///mlflow/mlflow.db"

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean:
	rm -rf outputs .cache .prefect mlflow
