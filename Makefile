# SCOPE — `make run` starts the embedded demo, `make test` runs lint, types and the test suite.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | md5sum | cut -c1-12)
PORT ?= 8000
HOST ?= 127.0.0.1
# gevent workers (scope_site/gevent_worker.py), one per core: on 2 cores, 2 workers routed 1,804-1,822 req/s
# against 1,554-1,708 for 3 (fewer switches between processes, larger commits; docs/performance.md, 14th session)
WORKERS ?= $(shell nproc)
# a worker restarts after MAX_REQUESTS to 1.5 × MAX_REQUESTS requests (a guard against slow leaks);
# a gevent worker serves ~1,000 routed requests a second on one core, so this is minutes, not seconds
MAX_REQUESTS ?= 300000
MANAGE := $(PY) manage.py

.PHONY: install run serve worker beat test lint typecheck pytest bench-quality bench-overhead bench-ui clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install --quiet --upgrade pip
	@$(PY) -m pip install --quiet -e '.[dev]'
	@rm -f $(VENV)/.installed-*
	@touch $@
	@echo "installed SCOPE into $(VENV)"

run: install
	@$(MANAGE) migrate --noinput -v0
	@$(MANAGE) seed_demo
	@SCOPE_USER_PASSWORD="$${SCOPE_DEMO_OPERATOR_PASSWORD:-operator-demo}" $(MANAGE) create_user operator --role operator >/dev/null
	@SCOPE_USER_PASSWORD="$${SCOPE_DEMO_AUDITOR_PASSWORD:-auditor-demo}" $(MANAGE) create_user auditor --role auditor >/dev/null
	@echo "SCOPE is starting on http://$(HOST):$(PORT)/"
	@echo "web UI: log in at http://$(HOST):$(PORT)/login/ as operator / $${SCOPE_DEMO_OPERATOR_PASSWORD:-operator-demo} (edits) or auditor / $${SCOPE_DEMO_AUDITOR_PASSWORD:-auditor-demo} (read, export, verify)"
	@echo "demo API key (shown once): $$($(MANAGE) create_api_key demo-$$(date +%s))"
	@$(MANAGE) run_embedded $(HOST):$(PORT)

serve: install
	@$(MANAGE) migrate --noinput -v0
	@$(MANAGE) collectstatic --noinput -v0
	$(VENV)/bin/gunicorn scope_site.wsgi:application -c scope_site/gunicorn_conf.py --bind $(HOST):$(PORT) --workers $(WORKERS) \
		--max-requests $(MAX_REQUESTS) --max-requests-jitter $$(( $(MAX_REQUESTS) / 2 )) --access-logfile - --timeout 120

worker: install
	$(VENV)/bin/celery -A scope_site.worker worker --loglevel INFO --concurrency 2

beat: install
	$(VENV)/bin/celery -A scope_site.beat beat --loglevel INFO

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: install
	$(VENV)/bin/mypy .

pytest: install
	SCOPE_TESTING=1 $(VENV)/bin/pytest $(PYTEST_ARGS)

test: lint typecheck pytest

bench-quality: install
	$(PY) bench/quality.py

bench-overhead: install
	$(PY) bench/overhead.py

bench-ui: install
	$(PY) bench/ui_scale.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) var .mypy_cache .ruff_cache .pytest_cache
