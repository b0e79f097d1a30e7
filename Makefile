# The two commands of the README. Both set up what they need first (hack/setup.sh).
CACHE_BIN := $(HOME)/.cache/halffull/bin
export PATH := $(PATH):$(CACHE_BIN)
PYTEST_ARGS ?= --durations=30

.PHONY: run test lint images

# The main job on this machine: the local cluster with a real node (halffull dev), the CPU example
# LLMService served by vLLM, and the operator reconciling it; prints the time to the first
# completion. Against a cluster of your own: .venv/bin/halffull operator.
run:
	@echo "make run: started at $$(date -u +%T)"
	HALFFULL_RUN_START=$$(date +%s) sh -c 'bash hack/setup.sh run && .venv/bin/halffull dev demo'

# The linters, then every test: unit, real control plane, real vLLM (CPU), real Helm.
test:
	bash hack/setup.sh test
	$(MAKE) lint
	.venv/bin/pytest $(PYTEST_ARGS)

# Build the operator, router and engine images and push them to your registry, where the chart
# finds them with --set image.registry=...: REGISTRY=registry.example.com/halffull make images
# (TAG, IMAGES, BUILD_ARGS, TOOL, TLS_VERIFY, PUSH: see hack/push-images.sh).
images:
	bash hack/push-images.sh

lint:
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	.venv/bin/mypy
	.venv/bin/lint-imports
