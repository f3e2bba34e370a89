# Thin wrapper: every target sets up what it needs on a fresh machine.
PYTHON ?= python3
VENV   := .venv
BIN    := $(abspath $(VENV))/bin
TORCH  := 2.13.0
# nbgrader runs `alembic` (and jupyter) from PATH.
export PATH := $(BIN):$(PATH)
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: venv vendor sandbox book test test-all release lab grade bench check clean

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q "torch==$(TORCH)"
	$(BIN)/python -c "import torch; print('torch==' + torch.__version__)" > $(VENV)/constraints.txt
	$(BIN)/pip install -q -c $(VENV)/constraints.txt -e ".[dev]"
	touch $@

venv: $(VENV)/.installed sandbox

# The grader runs every notebook in a bubblewrap sandbox: install Debian's bubblewrap when it
# is missing and apt-get can be used (as root); otherwise say so (sandbox tests then skip).
sandbox:
	@command -v bwrap >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  { apt-get install -y -q bubblewrap >/dev/null 2>&1 || \
	    { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q bubblewrap >/dev/null 2>&1; }; }; } || \
	  echo "note: bubblewrap (bwrap) is not installed and cannot be installed here; llmcourse grade needs it (or --unsafe-no-sandbox)"

# MathJax and mermaid from npm, so the book renders offline (the list of files copied
# lives in src/llmcourse/book.py). The venv is order-only: it must exist, but a newer venv
# is no reason to vendor again.
_vendor/static/.installed: _vendor/package.json _vendor/package-lock.json src/llmcourse/book.py | $(VENV)/.installed
	cd _vendor && npm ci --silent --no-audit --no-fund --ignore-scripts
	$(BIN)/python -m llmcourse.book vendor _vendor/node_modules _vendor/static
	touch $@

vendor: venv _vendor/static/.installed

book: vendor
	$(BIN)/jupyter-book build . --warningiserror --keep-going --builder html

test: vendor sandbox
	$(BIN)/python -m pytest -n 2 --dist loadgroup --durations=40

# The same, with every cataloged mistake graded end to end through nbgrader (slower).
test-all: vendor sandbox
	LLMCOURSE_E2E_PACKS=0 LLMCOURSE_TEST_ALL=1 $(BIN)/python -m pytest -n 2 --dist loadgroup --durations=40

release: venv
	$(BIN)/llmcourse release

# JupyterLab for learners and instructors alike: served from the repository root (so
# nbgrader's course root, autograder/, is under it) and opened on chapters/. autograder/ is
# on the Jupyter config path: nbgrader finds its nbgrader_config.py there (the formgrader
# works), and JupyterLab its labconfig/ (the .md reading pages open as notebooks, jupytext).
lab: venv
	JUPYTER_CONFIG_PATH=$(abspath autograder) $(BIN)/jupyter lab --ServerApp.root_dir=$(CURDIR) \
		--LabApp.default_url=/lab/tree/chapters $(ARGS)

grade: venv sandbox
	$(BIN)/llmcourse grade $(if $(SUBMISSIONS),$(SUBMISSIONS),autograder/submitted)

bench: venv
	$(BIN)/python tests/bench.py $(ARGS)

clean:
	rm -rf _build
