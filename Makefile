# Every target sets itself up: a fresh machine needs only python3 (3.11+) and make.
VENV      ?= .venv
PY        := $(VENV)/bin/python
STAMP     := $(VENV)/.installed
# CPU build on these machines; on a GPU machine `make TORCH=torch==2.13.0 ...` takes the CUDA build from PyPI.
TORCH     ?= torch==2.13.0
CONFIG    ?= config.toml
TINY      ?= tiny-models
PYTEST_ARGS ?=
# Test files are spread over this many processes (pytest-xdist; a file stays on one, so its shared worker does too).
# Three on two cores: most end-to-end tests wait on sockets and worker processes, not the CPU (7:28 → 6:29 here).
TEST_PROCS ?= 3

.PHONY: install run demo test lint typecheck bench clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first: installed later as a dependency, pip would pull a multi-GB CUDA build
	$(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

# Runs the bot: the enabled front ends (tokens from CLAYBOT_TELEGRAM_TOKEN / CLAYBOT_DISCORD_TOKEN) and the worker.
run: $(STAMP)
	$(VENV)/bin/claybot run --config $(CONFIG)

# Offline in seconds, no token, no model download: tiny models, examples/photo.jpg → out/clay.png.
demo: $(STAMP)
	test -f $(TINY)/config.toml || $(VENV)/bin/claybot tiny-models $(TINY)
	$(VENV)/bin/claybot stylize examples/photo.jpg -o out/clay.png --config $(TINY)/config.toml --seed 1

# Lint, types, then the test suite. pytest exits 5 when it collected no test: that is a failure here, never a pass.
test: lint typecheck
	@$(PY) -m pytest -n $(TEST_PROCS) --dist loadfile $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests" >&2; fi; exit $$rc

# Style and common mistakes (ruff, configured in pyproject.toml).
lint: $(STAMP)
	$(VENV)/bin/ruff check .

# Types of bot/, cogs/ and pipeline/ (mypy, configured in pyproject.toml).
typecheck: $(STAMP)
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) $(TINY) out
