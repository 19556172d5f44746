# The two set-up commands: `make demo` and `make test`. Each installs what it needs into .venv.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Offline machines keep a copy of the demo data beside the project; elsewhere it downloads.
DEMO_COPY := $(wildcard ../shared/datasets/hymenoptera_data)

.PHONY: demo test install lint clean repro plots docs

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
	@echo "Browse the run: $(BIN)/mlflow ui --backend-store-uri sqlite:///mlflow/mlflow.db, then"
	@echo "  http://127.0.0.1:5000/#/experiments?workflowType=machine_learning"

# Two workers, one test file each at a time: half the suite waits on servers and subprocesses,
# so two files side by side use both cores (about 15 min in one process on 2 cores).
test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet
	$(BIN)/python -m pytest -n 2 --dist loadfile --durations=15 || { status=$$?; \
	  [ $$status -ne 5 ] || echo "pytest collected no tests (exit 5): a failure, not a pass" >&2; \
	  exit $$status; }

# dvc repro with this project's venv on PATH (the stages run `python -m tlpipe.ops.dvc_stage`).
repro: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc repro

# DVC plots as HTML that renders offline: vega, vega-lite and vega-embed from the npm registry.
VEGA := .cache/vega/node_modules
plots: $(STAMP)
	test -f $(VEGA)/vega-embed/build/vega-embed.min.js || npm install --silent --no-fund --no-audit --prefix .cache/vega vega@5 vega-lite@5 vega-embed@6
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc plots show --html-template plots/template.html -o dvc_plots
	cp $(VEGA)/vega/build/vega.min.js $(VEGA)/vega-lite/build/vega-lite.min.js $(VEGA)/vega-embed/build/vega-embed.min.js dvc_plots/
	@echo "Open dvc_plots/index.html"

# The manual (docs/, mkdocs.yml) as a site in site/: open site/index.html.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	$(BIN)/ruff format --check .

clean:
	rm -rf .cache .prefect mlflow dvc_plots
