# derm_exp — `make demo` and `make test` set everything up on a fresh machine (Python 3.11 + pip).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
UI_PORT ?= 5000
ARGS ?=

export MLFLOW_DISABLE_TELEMETRY := true
export HYDRA_FULL_ERROR ?= 0

.PHONY: install demo test train tune ui dashboard lint help server server-stop server-status

help:  ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)  ## Create .venv and install derm_exp with its dev extras

demo: $(STAMP)  ## Train the demo model on a generated HAM10000-format dataset and log it to MLflow
	$(BIN)/python -m derm_exp.train experiment=demo $(ARGS)

test: $(STAMP)  ## Run the test suite
	$(BIN)/python -m pytest -q -n auto --dist loadgroup $(ARGS)

train: $(STAMP)  ## Train with overrides: make train ARGS="model=efficientnet_v2_s data.root=data/HAM10000"
	$(BIN)/python -m derm_exp.train $(ARGS)

tune: $(STAMP)  ## Optuna sweep: make tune ARGS="data.root=data/HAM10000 hydra.sweeper.n_trials=30"
	$(BIN)/python -m derm_exp.train -m hparams_search=optuna $(ARGS)

# MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false: MLflow 3.17's server otherwise starts a job runner and
# seven huey consumers for its GenAI jobs, unused here (measured: 10 processes, 2.4 GiB summed RSS
# -> 2 processes, 0.6 GiB).
ui: $(STAMP)  ## Open the MLflow UI on http://127.0.0.1:$(UI_PORT) (local only)
	MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false $(BIN)/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlflow.db --host 127.0.0.1 --port $(UI_PORT) --workers 1

# The shared tracking server (README "Scaling out"): PostgreSQL + `mlflow server` in ./server/,
# on 127.0.0.1 only; options: make server ARGS="--port 5051 --db-port 5434" (see --help).
server: $(STAMP)  ## Start the shared MLflow + PostgreSQL server on http://127.0.0.1:5050
	$(BIN)/python -m derm_exp.server start $(ARGS)

server-stop: $(STAMP)  ## Stop it (MLflow, then PostgreSQL); its data stays in ./server/
	$(BIN)/python -m derm_exp.server stop $(ARGS)

server-status: $(STAMP)  ## Is it running, and how clients use it
	$(BIN)/python -m derm_exp.server status $(ARGS)

lint: $(STAMP)  ## ruff check + format check
	$(BIN)/ruff check derm_exp tests hydra_plugins
	$(BIN)/ruff format --check derm_exp tests hydra_plugins

dashboard: $(STAMP)  ## optuna-dashboard on http://127.0.0.1:8080 for the project's study database
	$(BIN)/optuna-dashboard sqlite:///$(CURDIR)/optuna.db --host 127.0.0.1 --port 8080
