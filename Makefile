# Every routine task of the project. `make help` lists them.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
SITE = $(shell $(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
PROTOS := $(shell find protos/mall -name '*.proto')
GEN := gen/python
SERVICES := members
export PYTHONDONTWRITEBYTECODE := 1

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
	cd protos && npx --yes @bufbuild/buf@1.75.0 lint

.PHONY: help install protos lint
