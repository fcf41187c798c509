# Every routine task of the project. `make help` lists them.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
SITE = $(shell $(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
PROTOS := $(shell find protos/mall -name '*.proto')
GEN := gen/python
K8S_VENV := .venv-k8s
K8S_VERSION ?= 1.32.0
OVERLAY ?= dev
PYTHON_IMAGE ?= python:3.11.7-slim-bookworm
IMAGE ?= mall:$(shell git rev-parse --short HEAD 2>/dev/null || echo dev)
IMAGE_BUILD_FLAGS ?=
SERVICES := members points orders community
export PYTHONDONTWRITEBYTECODE := 1
# Every process defaults to MALL_ENV=production (and refuses development secrets there);
# the targets here are development tools. Deployments run `python -m <svc>` with their own env.
export MALL_ENV ?= development

.DEFAULT_GOAL := help

help: ## List the targets
	@grep -hE '^[a-zA-Z0-9_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-16s\033[0m %s\n", $$1, $$2}'

$(VENV)/.installed: requirements.txt requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-dev.txt
	@# The repository's source roots go on the venv's path (like an editable install).
	printf '%s\n' "$(CURDIR)" "$(CURDIR)/$(GEN)" "$(CURDIR)/gateway" $(foreach s,$(SERVICES),"$(CURDIR)/services/$(s)") > "$$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/mall-sources.pth"
	touch $@

install: $(VENV)/.installed ## Create .venv and install the pinned dependencies

$(GEN)/.stamp: $(VENV)/.installed $(PROTOS) Makefile
	rm -rf $(GEN) && mkdir -p $(GEN)
	$(PY) -m grpc_tools.protoc -I protos -I "$(SITE)" --python_out=$(GEN) --pyi_out=$(GEN) --grpc_python_out=$(GEN) $(PROTOS)
	$(PY) -m grpc_tools.protoc -I protos -I "$(SITE)" --include_imports --include_source_info --descriptor_set_out=$(GEN)/mall/descriptors.binpb $(PROTOS)
	find $(GEN)/mall -type d -exec touch {}/__init__.py \;
	touch $@

protos: $(GEN)/.stamp ## Generate the Python code of the protos into gen/python

lint: protos ## Lint Python (ruff), type-check mallkit (mypy) and lint the protos (buf)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy mallkit
	rm -rf gen/buf-deps && mkdir -p gen/buf-deps/google/api gen/buf-deps/google/type
	cp "$(SITE)"/google/api/{annotations,http,field_behavior,httpbody}.proto gen/buf-deps/google/api/
	cp "$(SITE)"/google/type/date.proto gen/buf-deps/google/type/
	npx --yes @bufbuild/buf@1.75.0 lint

.PHONY: help install protos lint

run: protos ## Run everything (fake WeChat, services, gateway) on SQLite with demo data; Ctrl-C stops
	$(PY) scripts/run_local.py

reset: ## Delete the local SQLite databases (var/, or $MALL_VAR_DIR)
	rm -rf "$${MALL_VAR_DIR:-var}"

test: protos ## Run the whole test suite (MariaDB when it answers, else SQLite with a report)
	$(PY) -m pytest

test-sqlite: protos ## Run the suite on SQLite even where MariaDB answers
	MALL_TEST_MYSQL_URL=mysql+aiomysql://nobody@127.0.0.1:1/ $(PY) -m pytest

fuzz: protos ## Fuzz the gateway against its OpenAPI document (schemathesis; the bounded profile of make test)
	$(PY) -m pytest tests/fuzz -q

fuzz-nightly: protos ## The long fuzzing profile (100 examples per operation and token; MALL_FUZZ_EXAMPLES to change)
	MALL_FUZZ_EXAMPLES=$${MALL_FUZZ_EXAMPLES:-100} MALL_FUZZ_SEED=$${MALL_FUZZ_SEED:-$$RANDOM} \
	MALL_FUZZ_TIMEOUT_SECONDS=$${MALL_FUZZ_TIMEOUT_SECONDS:-7200} $(PY) -m pytest tests/fuzz -q -s

migrate: protos ## Apply migrations of SVC (default members) to its <SVC>_DATABASE_URL
	$(PY) -m $(or $(SVC),members) migrate

revision: protos ## New migration for SVC with MSG="..." (autogenerate against a scratch SQLite)
	$(PY) scripts/new_revision.py $(or $(SVC),members) "$(MSG)"

create-admin: protos ## Create the first admin: make create-admin USERNAME=admin PASSWORD=...
	MEMBERS_ADMIN_PASSWORD="$(PASSWORD)" $(PY) -m members create-admin --username "$(or $(USERNAME),admin)"

disable-staff: protos ## Disable a staff account (its tokens stop working within a minute): make disable-staff USERNAME=...
	$(PY) -m members disable-staff --username "$(USERNAME)"

# bench/ also holds what the benchmarks share (not benchmarks themselves).
BENCHES = $(filter-out bench/harness.py bench/loadgen.py bench/probe.py bench/profile_paths.py bench/grpc_echo.py,$(wildcard bench/*.py))

bench: protos ## Run every benchmark in bench/ (figures and ratios against a baseline measured in the same run)
	@set -e; for f in $(BENCHES); do echo "== $$f"; $(PY) $$f; done

profile: protos ## Per hot path: SQL statements and round trips per request (on the wire) and CPU ms per request per process (MariaDB)
	$(PY) bench/profile_paths.py $(PROFILE_ARGS)

know-data: protos ## Generate N members (default 1000000) with 5 purchase facts and 10 behaviour events each into MariaDB (kept)
	$(PY) bench/know_members.py --members $(or $(N),1000000) --load-only --buffer-pool-mb $(or $(BUFFER_POOL_MB),6144)

bench-know: protos ## Know-the-member benchmark at N members (default 100000): RFM, auto-tags, preview, materialize
	$(PY) bench/know_members.py --members $(or $(N),100000) --buffer-pool-mb $(or $(BUFFER_POOL_MB),6144)

bench-targeting: protos ## Audience targeting benchmark: a coupon campaign to a segment (SEGMENT, default all) of N members (default 100000) vs a raw INSERT ... SELECT
	$(PY) bench/audience_targeting.py --members $(or $(N),100000) --segment $(or $(SEGMENT),0)

bench-funnel: protos ## Audience funnel benchmark at N members (default 100000): a 90-day funnel of all channels vs a bare GROUP BY
	$(PY) bench/audience_funnel.py --members $(or $(N),100000)

check-points: protos ## Verify every points account equals its ledger and lots (POINTS_DATABASE_URL)
	$(PY) -m points check

dlq: protos ## List dead-lettered events of every service (MALL_NATS_URL)
	$(PY) -m mallkit.dlq list

dlq-replay: protos ## Replay dead letter SEQ through its consuming service: make dlq-replay SEQ=12
	@test -n "$(SEQ)" || { echo "usage: make dlq-replay SEQ=<seq from make dlq>"; exit 2; }
	svc=$$($(PY) -m mallkit.dlq service $(SEQ)) && $(PY) -m $$svc dlq replay $(SEQ)

image: ## Build the image with docker or podman: make image [IMAGE=mall:tag] [PYTHON_IMAGE=...] [IMAGE_BUILD_FLAGS=...]
	@if docker info >/dev/null 2>&1; then engine="docker build"; \
	elif command -v podman >/dev/null 2>&1; then engine="podman build --format docker"; \
	else echo "make image: no container engine here (a docker daemon or podman); make k8s-check still lints the Dockerfile" >&2; exit 1; fi; \
	set -x; $$engine $(IMAGE_BUILD_FLAGS) --build-arg PYTHON_IMAGE=$(PYTHON_IMAGE) -t $(IMAGE) .

$(K8S_VENV)/.installed: k8s/requirements-check.txt
	test -x $(K8S_VENV)/bin/python || $(PYTHON) -m venv $(K8S_VENV)
	$(K8S_VENV)/bin/pip install -q -r k8s/requirements-check.txt
	touch $@

k8s-render: protos ## Render every overlay of k8s/ into gen/k8s/<overlay>.yaml (Secrets from the *.example files)
	$(PY) scripts/k8s_render.py gen/k8s

k8s-check: k8s-render $(K8S_VENV)/.installed ## Offline checks: kustomize, kubernetes-validate --strict, hadolint, checkov, tests/k8s
	$(K8S_VENV)/bin/kubernetes-validate --quiet --strict -k $(K8S_VERSION) gen/k8s/*.yaml
	$(K8S_VENV)/bin/hadolint Dockerfile
	cp Dockerfile gen/k8s/Dockerfile
	$(K8S_VENV)/bin/checkov --config-file k8s/.checkov.yaml -d gen/k8s
	$(PY) -m pytest tests/k8s -q

k8s-deploy: ## Deploy OVERLAY=dev|prod to kubectl's current context: config, migration Jobs (waited for), rollout
	scripts/k8s_deploy.sh $(OVERLAY)

.PHONY: image k8s-render k8s-check k8s-deploy

clean: ## Remove generated code, caches and the venvs
	rm -rf $(GEN) gen/k8s $(VENV) $(K8S_VENV) .pytest_cache .ruff_cache .mypy_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +

.PHONY: run reset test test-sqlite fuzz fuzz-nightly migrate revision create-admin disable-staff bench profile know-data bench-know bench-funnel bench-targeting check-points dlq dlq-replay clean
