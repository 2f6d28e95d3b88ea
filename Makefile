# pydeploy.web developer commands. `make test` is what CI runs (.ci/run).
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

VENV ?= .venv
PY := $(VENV)/bin/python
# sslyze, in a virtualenv of its own (requirements-sslyze.txt says why): the molecule/nginx
# tests run it as PYDEPLOY_SSLYZE.
SSLYZE_VENV ?= .venv-sslyze
BIN := $(VENV)/bin
export PATH := $(abspath $(BIN)):$(PATH)
# Package caches shared by all test containers and kept between runs (apt, pip, uv).
export PYDEPLOY_CACHE_DIR ?= /var/cache/pydeploy-test
# The scenarios' playbooks run under Mitogen for Ansible's strategy (mitogen in
# requirements-dev.txt): the same tasks, about 3x less overhead each (bench/pertask), so
# make test fits CI's budget. The collection does not need it; e2e_flask_uwsgi
# converges under Ansible's default strategy, as most users run site.yml, and
# `make molecule-all PYDEPLOY_TEST_STRATEGY=linear` runs them all that way.
PYDEPLOY_TEST_STRATEGY ?= mitogen_linear
MOLECULE_ENV = ANSIBLE_STRATEGY=$(PYDEPLOY_TEST_STRATEGY) PYDEPLOY_SSLYZE=$(abspath $(SSLYZE_VENV))/bin/sslyze \
	ANSIBLE_STRATEGY_PLUGINS=$$($(PY) -c 'import ansible_mitogen, os; print(os.path.dirname(ansible_mitogen.__file__))')/plugins/strategy
SCENARIOS := $(sort $(notdir $(patsubst %/molecule.yml,%,$(wildcard molecule/*/molecule.yml))))
S ?=

.PHONY: help collections demo demo-clean test lint sanity build docs dist unit unit-timed unit-untimed molecule molecule-all test-images clean

# What ansible.cfg's collections_path and the tests resolve pydeploy.web.* through: a link
# back to this checkout, made here rather than committed (ansible-test and Galaxy refuse a
# symlink to a directory inside a collection).
COLLECTION_LINK := .collections/ansible_collections/pydeploy/web

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | column -t -s $$'\t'

collections: $(COLLECTION_LINK) ## Link .collections/ansible_collections/pydeploy/web to this checkout (every target does it)

$(COLLECTION_LINK):
	@mkdir -p $(@D)
	ln -sfn ../../.. $@

demo: $(VENV)/.installed $(COLLECTION_LINK) ## Deploy the example Django project into a container with site.yml, print its URL
	scripts/demo

demo-clean: ## Remove the demo container
	scripts/demo clean

# The scenarios one at a time and, beside them, the checks (a few minutes of CPU). The
# checks run on the CPU time the scenarios leave (scripts/run-idle: a CPU cgroup marked
# idle where the machine allows it, else niced): each scenario is a chain of plays whose
# every step waits for the one before, so CPU taken from it lengthens make test one for
# one, and nice alone does not keep the checks off the test containers, which are in
# cgroups of their own (app_release, measured: 80 s alone, 78 s beside the idle checks,
# 119 s beside the idle checks but for the unit tests, niced). The unit tests that bound wall-clock time (UNIT_TIMED) run apart, niced but
# not idle, so that a starved process cannot miss their bounds. The checks' output is
# printed in one piece when they end; if they fail, the scenarios stop after the one in
# progress and make test fails.
test: $(VENV)/.installed $(SSLYZE_VENV)/.installed $(COLLECTION_LINK) test-images ## Lint, artifact check, unit tests, docsite and every Molecule scenario
	@log=$$(mktemp); timed=$$log.timed; stop=$$log.stop; trap 'rm -f $$log $$timed $$stop' EXIT; t0=$$(date +%s); \
	{ scripts/run-idle $(MAKE) --no-print-directory -j3 --output-sync=target lint build unit-untimed docs > $$log 2>&1 & idle=$$!; \
	  nice -n 10 $(MAKE) --no-print-directory unit-timed > $$timed 2>&1 & niced=$$!; \
	  rc=0; wait $$idle || rc=$$?; wait $$niced || rc=$$?; exit $$rc; } & checks=$$!; \
	$(MAKE) --no-print-directory molecule-all MOLECULE_STOP_FILE=$$stop & scenarios=$$!; \
	if wait $$checks; then rc=0; else rc=$$?; touch $$stop; fi; \
	{ echo "=== checks (lint, build, unit, docs) $$( [ $$rc = 0 ] && echo passed || echo FAILED) in $$(( $$(date +%s) - t0 )) s:"; \
	  cat $$log $$timed; echo "=== end of the checks' output"; } | sed 's/^/checks| /'; \
	wait $$scenarios || exit $$?; exit $$rc

# Bytecode is compiled on both cores and not for the ansible package's collections, which
# Ansible's collection loader compiles from source whatever lies beside them (pip's own
# compile step took 33 s of a 46 s install here). Compiled it must be: with
# PYTHONDONTWRITEBYTECODE set, as on the test machines, nothing is cached on import.
$(VENV)/.installed: requirements-dev.txt
	@[ -x $(PY) ] || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q --no-compile -r requirements-dev.txt
	$(PY) -m compileall -q -j 0 -x /ansible_collections/ $$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
	@touch $@

$(SSLYZE_VENV)/.installed: requirements-sslyze.txt
	@[ -x $(SSLYZE_VENV)/bin/python ] || python3 -m venv $(SSLYZE_VENV)
	$(SSLYZE_VENV)/bin/python -m pip install -q --upgrade pip
	$(SSLYZE_VENV)/bin/python -m pip install -q -r requirements-sslyze.txt
	@touch $@

lint: $(VENV)/.installed $(COLLECTION_LINK) ## Every checker, in order: ansible-lint, ansible-test sanity, antsibull-docs, antsibull-changelog, galaxy-importer, interface checks (scripts/lint)
	scripts/lint

# ansible-test runs only inside .../ansible_collections/<namespace>/<name>/: sanity and units
# each get a copy of the files git would commit (tracked and new, not ignored), in a git
# repository of its own so that it checks what git holds, under build/<sanity|units>/ (one
# each: make test may run both at once). It bootstraps pip in its virtualenvs with a
# get-pip.py it downloads from a host these machines cannot reach:
# scripts/ansible-test-get-pip.py stands in, in ansible-test's cache.
ANSIBLE_TEST := $(abspath $(BIN))/ansible-test
ANSIBLE_TEST_PYTHON := 3.11
COLLECTION_PATH := ansible_collections/pydeploy/web
# $(call ansible-test-tree,build/<name>): the get-pip stand-in in place, the fresh copy made.
define ansible-test-tree
	@v=$$($(PY) -c 'import types; from ansible_test._internal.python_requirements import get_venv_packages as p; print(p(types.SimpleNamespace(version="$(ANSIBLE_TEST_PYTHON)"))["pip"])'); \
	    d=~/.ansible/test/cache; mkdir -p $$d; install -m 0644 scripts/ansible-test-get-pip.py $$d/.get-pip.$$$$; \
	    mv -f $$d/.get-pip.$$$$ $$d/get_pip_$${v//./_}.py
	@rm -rf $(1); mkdir -p $(1)/$(COLLECTION_PATH)
	@git ls-files -z --cached --others --exclude-standard | while IFS= read -r -d '' f; do [ -e "$$f" ] || [ -L "$$f" ] && printf '%s\0' "$$f"; done \
	    | tar cf - --null -T - | tar xf - -C $(1)/$(COLLECTION_PATH)
	@cd $(1)/$(COLLECTION_PATH) && git init -q && git add -A && git -c user.name=ansible-test -c user.email=ansible-test@localhost commit -qm copy
endef

# Every sanity test that applies, on the whole tree, nothing ignored (there is no
# tests/sanity/ignore-*.txt); then a line per test with its count of findings and the total
# (scripts/sanity-summary, from the tests' junit files and ansible-test's output).
SANITY_ROOT := build/sanity/$(COLLECTION_PATH)
sanity: $(VENV)/.installed ## ansible-test sanity (every test that applies) on a copy of the tree
	$(call ansible-test-tree,build/sanity)
	@t0=$$(date +%s); log=$(SANITY_ROOT)/tests/output/sanity.log; mkdir -p $$(dirname $$log); rc=0; \
	    (cd $(SANITY_ROOT) && $(ANSIBLE_TEST) sanity --venv --python $(ANSIBLE_TEST_PYTHON) --color no --junit) 2>&1 | tee $$log || rc=$$?; \
	    $(PY) scripts/sanity-summary $(SANITY_ROOT)/tests/output/junit $$log $$(( $$(date +%s) - t0 )) || { [ $$rc != 0 ] || rc=1; }; exit $$rc

build: $(VENV)/.installed $(COLLECTION_LINK) ## Build the collection artifact and check what it holds
	ansible-galaxy collection build --force
	@files=$$(tar tzf pydeploy-web-*.tar.gz); \
	    bad=$$(grep -E '^(molecule|tests|bench|scripts|examples/(django|flask)|dist|\.demo|\.venv|\.collections)/' <<< "$$files" || true); \
	    if [ -n "$$bad" ]; then echo "the artifact holds files that build_ignore should keep out:"; echo "$$bad" | head; exit 1; fi; \
	    for f in LICENSE examples/inventory/group_vars/web/app.yml examples/awx/survey-deploy.json meta/execution-environment.yml meta/ee-requirements.txt; do \
	        grep -qx "$$f" <<< "$$files" || { echo "the artifact lacks $$f"; exit 1; }; done; \
	    echo "artifact: $$(ls pydeploy-web-*.tar.gz), $$(wc -l <<< "$$files") entries, no tests, scenarios or example apps"

# The collection's docsite as antsibull-docs renders collections, under build/docs/:
# sphinx-init writes the Sphinx project (conf.py, antsibull-docs.cfg), antsibull-docs
# collection the pages (build/docs/rst/, failing on a plugin or role it cannot parse
# instead of writing an error page) and sphinx-build the HTML (build/docs/build/html/,
# every warning an error), with the flags of the build.sh sphinx-init writes. Offline:
# scripts/docsite/conf_offline.py, appended to conf.py, empties intersphinx_mapping (no
# docs.ansible.com inventory can be fetched) and links the references into Ansible's
# documentation itself; scripts/docsite/antsibull-docs.cfg keeps antsibull's log out of
# ~ and Ansible's temporary files go to build/docs/tmp/. Then one page per module and
# per role, none an error page, or the target fails. About 5 s.
DOCS := build/docs
docs: $(VENV)/.installed $(COLLECTION_LINK) ## The collection's docsite (antsibull-docs, Sphinx) in build/docs/, no warning
	@rm -rf $(DOCS); mkdir -p $(DOCS)/tmp; chmod go-w $(DOCS)
	antsibull-docs --config-file scripts/docsite/antsibull-docs.cfg sphinx-init --use-current --squash-hierarchy --fail-on-error --dest-dir $(DOCS) \
	    --project pydeploy.web --copyright 'pydeploy.web maintainers' --title pydeploy.web \
	    --extra-conf 'html_title=pydeploy.web documentation' pydeploy.web > /dev/null
	cat scripts/docsite/conf_offline.py >> $(DOCS)/conf.py
	ANSIBLE_LOCAL_TEMP=$(abspath $(DOCS))/tmp antsibull-docs \
	    --config-file $(DOCS)/antsibull-docs.cfg --config-file scripts/docsite/antsibull-docs.cfg \
	    collection --cleanup everything --fail-on-error --use-current --squash-hierarchy --dest-dir $(DOCS)/rst pydeploy.web
	@sphinx-build -M html $(DOCS)/rst $(DOCS)/build -c $(DOCS) -W --keep-going -q -w $(DOCS)/warnings.log \
	    || { echo "docs: sphinx-build failed, $$(grep -c . $(DOCS)/warnings.log) warnings"; exit 1; }
	@html=$(DOCS)/build/html; modules=$$(ls $$html/*_module.html | wc -l); roles=$$(ls $$html/*_role.html | wc -l); \
	    errors=$$(cat $(DOCS)/rst/*.rst | grep -c -e 'was malformed' -e 'There were some errors parsing the documentation' || true); \
	    warnings=$$(grep -c . $(DOCS)/warnings.log || true); \
	    echo "docs: $$modules module pages, $$roles role pages, $$errors error pages, $$warnings warnings -> $$html/index.html"; \
	    want_modules=$$(ls plugins/modules/*.py | wc -l); want_roles=$$(ls -d roles/*/ | wc -l); \
	    [ "$$modules" = "$$want_modules" ] && [ "$$roles" = "$$want_roles" ] && [ "$$errors" = 0 ] && [ "$$warnings" = 0 ] \
	    || { echo "docs: expected $$want_modules module pages, $$want_roles role pages, no error page and no warning"; exit 1; }

dist: ## Build the example apps' release archives under dist/ (scripts/build-dist all)
	scripts/build-dist all

# The unit tests (tests/unit: plugins, scripts, bench) as ansible-test units runs them, on
# a copy of the tree like sanity's, in a virtualenv of its own with tests/unit/requirements.txt
# (Django, for the tests against a real project: none is skipped), two workers.
# The unit tests whose assertions bound wall-clock time (a probe's timeouts, a load
# generator's deadlines, subprocess timeouts): make test runs them apart from the others
# (unit-timed, unit-untimed), which it runs on idle CPU time only.
UNIT_TIMED := tests/unit/plugins/modules/test_wsgi_probe.py tests/unit/plugins/action/test_release_action.py \
	tests/unit/bench/test_zero_downtime.py tests/unit/meta/test_execution_environment.py
# The test files to run (all when empty) and the directory of the copy they run in.
UNIT_TESTS ?=
UNIT_TREE ?= build/units
unit: $(VENV)/.installed ## Unit tests (ansible-test units) for plugins/, scripts/ and bench/
	$(call ansible-test-tree,$(UNIT_TREE))
	cd $(UNIT_TREE)/$(COLLECTION_PATH) && $(ANSIBLE_TEST) units --venv --python $(ANSIBLE_TEST_PYTHON) --color no --num-workers 2 $(UNIT_TESTS)

unit-timed: $(VENV)/.installed ## The unit tests that bound wall-clock time (UNIT_TIMED)
	$(MAKE) --no-print-directory unit UNIT_TREE=build/units-timed UNIT_TESTS="$(UNIT_TIMED)"

unit-untimed: $(VENV)/.installed ## Every other unit test
	$(MAKE) --no-print-directory unit UNIT_TESTS="$(filter-out $(UNIT_TIMED),$(sort $(shell find tests/unit -name 'test_*.py')))"

test-images: ## Start Docker if needed and build the test images (once)
	scripts/ensure-docker
	scripts/build-test-images
	@for r in bookworm trixie; do for c in apt/partial pip uv; do mkdir -p $(PYDEPLOY_CACHE_DIR)/$$r/$$c; done; \
	    chmod 1777 $(PYDEPLOY_CACHE_DIR)/$$r/pip $(PYDEPLOY_CACHE_DIR)/$$r/uv; done

molecule: $(VENV)/.installed $(SSLYZE_VENV)/.installed $(COLLECTION_LINK) test-images ## One Molecule scenario: make molecule S=<scenario>
	@[ -n "$(S)" ] || { echo "name a scenario: make molecule S=<$(subst $(eval ) ,|,$(SCENARIOS))>"; exit 2; }
	$(MOLECULE_ENV) molecule test -s $(S)

# MOLECULE_STOP_FILE (set by make test): once that file exists, no further scenario starts.
molecule-all: $(VENV)/.installed $(SSLYZE_VENV)/.installed $(COLLECTION_LINK) test-images ## Every Molecule scenario, one after the other
	@for s in $(SCENARIOS); do \
	    if [ -n "$(MOLECULE_STOP_FILE)" ] && [ -e "$(MOLECULE_STOP_FILE)" ]; then echo "=== molecule: stopped before $$s (the checks failed)"; exit 1; fi; \
	    echo "=== molecule scenario $$s"; t0=$$(date +%s); $(MOLECULE_ENV) molecule test -s $$s || exit 1; \
	    echo "=== molecule scenario $$s passed in $$(( $$(date +%s) - t0 )) s"; done

clean: ## Remove build output (not the images or caches)
	rm -rf pydeploy-web-*.tar.gz .pytest_cache build
