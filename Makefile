# relay — the two commands a new machine needs: `make run` and `make test`.
# Both bootstrap a virtualenv from requirements-dev.txt (Python 3.11+ is the only prerequisite).

PYTHON ?= $(shell for p in python3.13 python3.12 python3.11 python3; do \
	command -v $$p >/dev/null 2>&1 && $$p -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
	2>/dev/null && echo $$p && break; done)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test test-python test-client lint bench soak token clean

$(STAMP): requirements.txt requirements-dev.txt
	@test -n "$(PYTHON)" || { echo "relay needs Python 3.11 or newer on PATH"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet --require-hashes --no-deps -r requirements-dev.txt
	touch $(STAMP)

## lock: recompile requirements.txt and requirements-dev.txt (every package pinned, with hashes)
##       from requirements.in / requirements-dev.in, in a throw-away venv of its own
.PHONY: lock
lock:
	$(PYTHON) -m venv .venv-lock
	.venv-lock/bin/pip install --quiet pip-tools==7.6.2
	for name in requirements requirements-dev; do \
		.venv-lock/bin/pip-compile --quiet --generate-hashes --allow-unsafe --strip-extras \
			--no-emit-index-url --no-emit-find-links -o $$name.txt $$name.in || exit 1; done
	rm -rf .venv-lock

client/node_modules/.package-lock.json: client/package.json client/package-lock.json
	cd client && npm ci --no-audit --no-fund --loglevel=error

## run: relay on an embedded PostgreSQL with 2 workers on http://127.0.0.1:3000
##      (another port: make run PORT=3001)
run: $(STAMP)
	$(PY) -m relay dev

## test: everything — Python (real PostgreSQL, real gunicorn), the JS client, and the example
##       Next.js app built and clicked through in headless Chromium
test: lint test-client test-python

lint: $(STAMP)
	$(VENV)/bin/ruff check relay tests $(wildcard bench) wsgi.py gunicorn.conf.py

test-python: $(STAMP) client/node_modules/.package-lock.json
	$(PY) -m pytest -q

test-client: client/node_modules/.package-lock.json
	cd client && npm run --silent typecheck && npm test

## bench: the performance benchmark (prints a table, writes bench/results/); options, e.g.
##        make bench BENCH_ARGS="--quick" (see .venv/bin/python -m bench.run --help)
bench: $(STAMP)
	$(PY) -m bench.run $(BENCH_ARGS)

## bench-sweep: latency against load for relay and node-ws (table, bench/results/, and the chart
##              docs/perf-latency-vs-load.png); e.g. make bench-sweep SWEEP_ARGS="-C 2000 --rates 1000,5000"
##              (see .venv/bin/python -m bench.sweep --help)
.PHONY: bench-sweep
BENCH_STAMP := $(VENV)/.bench-installed

$(BENCH_STAMP): $(STAMP) bench/requirements.txt
	$(PY) -m pip install --quiet -r bench/requirements.txt
	touch $(BENCH_STAMP)

bench-sweep: $(BENCH_STAMP)
	$(PY) -m bench.sweep $(SWEEP_ARGS)

## bench-scale: the scale scenario alone: one relay with 100,000 users (about 10 minutes; the
##              machine's hard open-files limit must allow ~20,000 per process); e.g.
##              make bench-scale SCALE_ARGS="--user-channels listen" or SCALE_ARGS="--quick"
.PHONY: bench-scale
bench-scale: $(STAMP)
	$(PY) -m bench.run --scenarios scale $(SCALE_ARGS)

token: $(STAMP)
	@$(PY) -m relay token --user-id $${USER_ID:-42}

clean:
	rm -rf $(VENV) client/node_modules .pytest_cache .ruff_cache \
		examples/nextjs/node_modules examples/nextjs/.next examples/nextjs/vendor
