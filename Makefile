# Two commands a newcomer needs (both set everything up first):
#   make demo   -- the chat demo under gevent on 127.0.0.1 (PORT=8000 by default)
#   make test   -- every test layer CI runs (.ci/run calls this)
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_STAMP := $(VENV)/.demo-installed

.PHONY: setup browser-setup test unit integration matrix build compliance compliance-full bench bench-servers bench-idle bench-groups bench-history bench-presence recovery-full vanish-full lint typecheck docs coverage fuzz soak demo clean bench-scale redis-setup bench-cluster bench-asgi

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev,asgi,gevent,gunicorn,eventlet,redis,uwsgi,prometheus]'
	touch $(STAMP)

setup: $(STAMP)

# The demo needs gevent and redis-py, not the dev tools: a newcomer waits for less.
$(DEMO_STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e '.[gevent,redis]'
	touch $(DEMO_STAMP)

# apt-get waits for another apt-get's lock (two checkouts set up at once) instead of failing.
APT_GET := apt-get -o DPkg::Lock::Timeout=600

# Debian's Chromium for the demo's browser tests (tests/demo); Playwright only drives it.
browser-setup:
	command -v chromium >/dev/null 2>&1 || { $(APT_GET) update -q && \
		DEBIAN_FRONTEND=noninteractive $(APT_GET) install -y -q chromium; }

# Debian's redis-server and redis-cli (7.0 or later: sharded pub/sub) for the groups tests,
# which start their own servers, Redis Clusters and Sentinels on free ports.
redis-setup:
	command -v redis-server >/dev/null 2>&1 && command -v redis-cli >/dev/null 2>&1 || \
		{ $(APT_GET) update -q && DEBIAN_FRONTEND=noninteractive $(APT_GET) install -y -q \
		redis-server redis-tools; }

# Four workers on two cores: the unit layer waits (timeouts, sockets, subprocesses) more than
# it computes (~35 s of CPU in ~60 s of wall time with two). worksteal keeps a worker from
# idling behind the gevent sub-suite (~8 s, one test). PYTHONDONTWRITEBYTECODE (set on some
# machines) would make every worker rewrite every test module's asserts again (~2 s of CPU each).
unit: setup
	PYTHONDONTWRITEBYTECODE= $(PY) -m pytest -q -m "not server and not slow" -p no:cacheprovider \
		-n 4 --dist worksteal

integration: setup browser-setup redis-setup
	$(PY) -m pytest -q -m "server" -p no:cacheprovider

# The other supported Python x Django pairs (noxfile.py; README "Versions tested"): the
# unit layer and the shared server suite on runserver and gevent for each, then the
# release build (`build`). Needs python3.10 ... python3.13 (pyenv's are found). The pairs
# run two at a time (tools/matrix.py: half their time is spent waiting on sockets).
matrix: setup
	$(PY) tools/matrix.py
	$(VENV)/bin/nox -s build

# dist/: the sdist and a wheel per supported Python, each checked (docs/release.rst).
build: setup
	$(VENV)/bin/nox -s build

# CI's share: the whole Autobahn suite on gevent, categories 1-7 and 10 on the other servers.
compliance: setup
	$(PY) -m tests.compliance

# Every case on every server of the default backend; prints one table.
compliance-full: setup
	$(PY) -m tests.compliance --full

# Seconds first (ruff, mypy, the docs), then every test under coverage, then Autobahn,
# then the other Pythons and Djangos.
test: setup browser-setup redis-setup lint typecheck docs coverage
	$(MAKE) compliance
	$(MAKE) matrix

lint: setup
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

typecheck: setup
	$(PY) -m mypy --strict dwebsocket

# -E: a fresh build, so a page is never judged by a stale cache.
docs: setup
	$(PY) -m sphinx -W --keep-going -q -E -b html docs docs/_build/html

# Every test, warnings as errors (pyproject) in Python's development mode (-X dev: the test
# processes only, not the servers they start), measured in the test processes
# ([tool.coverage]): two pytest-xdist workers, each measuring itself
# (tests/coverage_worker.py), their data combined. The protocol core stays at 100 %; the
# whole at least COVERAGE_MIN (measured: 88-90 %, depending on which timing-dependent paths
# a run takes).
COVERAGE_MIN ?= 85
coverage: setup browser-setup redis-setup
	$(PY) -m coverage erase
	$(PY) -X dev -m pytest -q -rs -p no:cacheprovider -p tests.coverage_worker \
		--dist worksteal --tx '2*popen//python=$(PY) -X dev'
	$(PY) -m coverage combine -q
	$(PY) -m coverage report --include='dwebsocket/protocol/*' --fail-under=100
	$(PY) -m coverage report --fail-under=$(COVERAGE_MIN)

bench: setup
	$(PY) bench/core.py

# dwebsocket against the other stacks (~40 min; QUICK=1 for a 3-minute smoke run);
# writes docs/benchmarks/results.md and its plots. Idle steps this machine's
# RLIMIT_NOFILE cannot hold (50,000 and 100,000) run in a guest whose root can raise it
# (bench/vm/run.py: KVM, else User-Mode Linux; about half an hour more under UML, one setting after the other).
BENCH_STAMP := $(VENV)/.bench-installed
$(BENCH_STAMP): $(STAMP)
	$(PY) -m pip install -q -e '.[bench]'
	touch $(BENCH_STAMP)

bench-servers: setup $(BENCH_STAMP)
	$(PY) bench/compare.py $(if $(QUICK),--quick)

# The idle test alone (10,000 / 50,000 / 100,000 connections), into bench/out/idle/.
# GUEST=tcg: straight to qemu's software emulation (under an hour on 2 cores), where auto
# would first try User-Mode Linux and find it cannot boot on this CPU.
bench-idle: setup $(BENCH_STAMP)
	$(PY) bench/compare.py --idle-only --out bench/out/idle $(if $(GUEST),--guest-backend $(GUEST))

# One group message to 1,000 and 10,000 members over 4 processes, against Channels +
# channels_redis group_send in the same run (~10 min; needs channels, channels_redis, daphne).
bench-groups: setup $(BENCH_STAMP)
	$(PY) bench/fanout.py

# dwebsocket under uvicorn (sync and async views) against Channels on the same uvicorn:
# 32 B echo at 100 connections, idle memory (~1.5 min); writes docs/benchmarks/asgi.json,
# which docs/asgi.rst quotes (tests/docs/test_asgi_numbers.py).
bench-asgi: setup $(BENCH_STAMP)
	$(PY) bench/asgi.py

# Group history: publish throughput with history on and off, recovery of 1,000 missed
# messages (under a minute); writes docs/benchmarks/history.json, which docs/recovery.rst quotes.
bench-history: setup
	$(PY) bench/history.py

# Presence of 10,000 members, users.send to 3 processes, revocation latency (< 2 min);
# writes docs/benchmarks/presence.json, which docs/users.rst quotes.
bench-presence: setup
	$(PY) bench/presence.py

# Recovery at the scale of issue 19 (CI runs it smaller): a client cut off for 30 s while
# 1,000 messages/s go to a group of 1,000 members, back with every message, in order, once
# (two tests, ~2 min each; heavy: run it under the shared lock).
recovery-full: setup
	DWEBSOCKET_RECOVERY_CUT=30 DWEBSOCKET_RECOVERY_RATE=1000 DWEBSOCKET_RECOVERY_MEMBERS=1000 \
		$(PY) -m pytest -q -s -p no:cacheprovider --timeout=900 \
		tests/groups/test_history_servers.py -k cut_off

# Issue 20's count: 1,000 clients that vanish (RST, no close frame) on each ASGI server,
# sync and async views; nothing left behind (sessions, threads, tasks). CI runs 200.
vanish-full: setup
	DWEBSOCKET_VANISHING=1000 $(PY) -m pytest -q -p no:cacheprovider \
		tests/asgi/test_asgi.py -k vanish

# 150,000 WebSockets on this machine: gunicorn -k gevent workers and websockets processes,
# every connection echoing and receiving one group broadcast through Redis (~20 min; heavy:
# run it under flock /work/.heavy.lock on a shared machine). CONNS=5000 for a smoke run.
bench-scale: setup $(BENCH_STAMP)
	$(PY) bench/scale.py $(if $(CONNS),--conns $(CONNS) --json bench/out/scale.json)

# Groups over one Redis node vs a 3-master Redis Cluster: fan-out latency (1,000 and 10,000
# members), publish throughput, and what each process receives that it does not need
# (~15 min; QUICK=1 for a smoke run).
bench-cluster: setup $(BENCH_STAMP) redis-setup
	$(PY) bench/cluster.py $(if $(QUICK),--quick --json bench/out/cluster.json)

# Coverage-guided fuzzing (atheris, installed here) of each parser for FUZZ_SECONDS (60),
# then the hypothesis properties with FUZZ_EXAMPLES (10,000) each: ~10 min, not in CI.
FUZZ_TARGETS := handshake response frames deflate
fuzz: setup
	$(PY) -m pip install -q atheris
	for target in $(FUZZ_TARGETS); do \
		$(PY) -m tests.fuzz.run $$target $(or $(FUZZ_SECONDS),60) || exit 1; done
	DWEBSOCKET_FUZZ_EXAMPLES=$(or $(FUZZ_EXAMPLES),10000) $(PY) -m pytest -q -p no:cacheprovider \
		--timeout=1800 tests/fuzz/test_properties.py

# 1,000 WebSockets echoing for DURATION seconds (300) on gevent: every echo checked, RSS
# watched (not in CI).
soak: setup
	$(PY) bench/soak.py $(if $(DURATION),--duration $(DURATION))

demo: $(DEMO_STAMP)
	$(PY) examples/chat/run.py

clean:
	rm -rf $(VENV) .nox build dist *.egg-info reports
