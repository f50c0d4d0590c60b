# upstreamd — see README.md. Quick start: `make demo`, then `make test`.
SHELL := /bin/bash
.DEFAULT_GOAL := build

GO      ?= go
DOCKER  ?= docker
# docker-compose 1.29 (Debian) or Compose v2, whichever is installed.
COMPOSE ?= $(shell command -v docker-compose >/dev/null 2>&1 && echo docker-compose || echo "docker compose")
VERSION ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
# The images (upstreamd/<name>:latest, from images/<name>) each target
# runs: the demo's; the cluster's (the demo and the benchmarks: nested
# hosts); every one, with the tests' WebSocket backend and ACME CA.
DEMO_IMAGES    := nginx apache etcd upstreamd
CLUSTER_IMAGES := nginx apache etcd host
IMAGES         := nginx apache etcd upstreamd host wsecho pebble
# golangci-lint, pinned here only (config: .golangci.yml). `go run pkg@version`
# builds it with the local Go outside this module (go.mod is untouched) and
# caches the binary (first build ~2 min here, then ~1 s of overhead).
GOLANGCI_LINT := $(GO) run github.com/golangci/golangci-lint/v2/cmd/golangci-lint@v2.15.0

# testcontainers: no reaper image here (we clean up ourselves), and dial
# 127.0.0.1 rather than the default gateway from inside a container.
export TESTCONTAINERS_RYUK_DISABLED := true
export TESTCONTAINERS_HOST_OVERRIDE := 127.0.0.1
# The classic builder where the docker CLI has no buildx plugin.
export DOCKER_BUILDKIT ?= $(shell $(DOCKER) buildx version >/dev/null 2>&1 && echo 1 || echo 0)

LDFLAGS := -s -w -X main.version=$(VERSION)

.PHONY: build images demo-images cluster-images base demo demo-token demo-down cluster-demo cluster-demo-down test unit integration bench fuzz lint clean

## build: the daemon binary at bin/upstreamd
build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "$(LDFLAGS)" -o bin/upstreamd ./cmd/upstreamd

## base: make sure debian:bookworm-slim exists (pull, else debootstrap + docker import)
base:
	./images/mkbase.sh

# build-images builds upstreamd/<name>:latest for each name in $(1), cached
# on a second run, after the binaries they take (the daemon's also goes to
# the cluster demo's hosts).
define build-images
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "$(LDFLAGS)" -o images/upstreamd/upstreamd ./cmd/upstreamd
	$(if $(filter wsecho,$(1)),CGO_ENABLED=0 $(GO) build -trimpath -o images/wsecho/wsecho ./integration/internal/wsecho)
	@for i in $(1); do \
		echo "building upstreamd/$$i:latest"; \
		$(DOCKER) build -q -t upstreamd/$$i:latest images/$$i 2>&1 >/dev/null \
			| grep -vE 'DEPRECATED: The legacy builder|BuildKit is currently disabled|environment-variable\.|^ *$$' >&2; \
		[ $${PIPESTATUS[0]} -eq 0 ] || exit 1; \
	done
endef

## images: build every image, upstreamd/{nginx,apache,etcd,upstreamd,host,wsecho,pebble}:latest (cached on a second run)
images: base
	$(call build-images,$(IMAGES))

## demo-images: build the demo's images only, upstreamd/{nginx,apache,etcd,upstreamd}:latest
demo-images: base
	$(call build-images,$(DEMO_IMAGES))

## cluster-images: build the cluster's images only, upstreamd/{nginx,apache,etcd,host}:latest
cluster-images: base
	$(call build-images,$(CLUSTER_IMAGES))

## demo: the demo's images, then etcd + upstreamd with compose; nginx answers on 127.0.0.1:8080
demo: demo-images demo-token
	$(COMPOSE) up -d
	@echo "waiting for nginx on http://127.0.0.1:8080/ ..."
	@for i in $$(seq 1 120); do \
		if curl -fsS -m 2 http://127.0.0.1:8080/ 2>/dev/null | grep -q hostname; then \
			echo "up: curl http://127.0.0.1:8080/ (see README: watching failover)"; \
			echo "status page: http://127.0.0.1:9180/?token=$$(cat .demo/admin.token)"; exit 0; \
		fi; sleep 0.5; \
	done; echo "nginx did not answer within 60 s; see: $(COMPOSE) logs upstreamd" >&2; exit 1

## demo-token: the demo's admin token (.demo/admin.token), made once
demo-token: .demo/admin.token
.demo/admin.token:
	@mkdir -p .demo
	@od -An -N16 -tx1 /dev/urandom | tr -d ' \n' > $@

## demo-down: stop the demo and remove every container it created
demo-down:
	-$(COMPOSE) stop upstreamd
	-ids=$$($(DOCKER) ps -aq --filter label=io.upstreamd.project=upstreamd); \
		[ -z "$$ids" ] || $(DOCKER) rm -f -v $$ids >/dev/null
	$(COMPOSE) down -v
	-nets=$$($(DOCKER) network ls -q --filter label=io.upstreamd.project=upstreamd); \
		[ -z "$$nets" ] || $(DOCKER) network rm $$nets >/dev/null

CLUSTER := $(COMPOSE) -f docker-compose.cluster.yml -p upstreamd-demo-cluster

## cluster-demo: the seed's three machines: 3 nested Docker hosts, 3 etcd members, a daemon per host
cluster-demo: cluster-images
	@mkdir -p .cluster-demo
	@[ -s .cluster-demo/admin.token ] || od -An -N16 -tx1 /dev/urandom | tr -d ' \n' > .cluster-demo/admin.token
	@echo "saving upstreamd/apache and upstreamd/nginx for the hosts' engines (.cluster-demo/apps.tar)"
	$(DOCKER) save -o .cluster-demo/apps.tar upstreamd/apache:latest upstreamd/nginx:latest
	$(CLUSTER) up -d
	@echo "waiting for the elected proxy (the hosts load the images first: about a minute) ..."
	@for i in $$(seq 1 240); do \
		addr=$$($(DOCKER) exec upstreamd-demo-hosta upstreamd status 2>/dev/null | sed -n 's/^PROXY: on the leader, node [^,]*, at //p'); \
		if [ -n "$$addr" ] && curl -fsS -m 2 "http://$$addr/" 2>/dev/null | grep -q hostname; then \
			echo "up: curl http://$$addr/  (leader and nodes: docker exec upstreamd-demo-hosta upstreamd status)"; \
			echo "status pages: http://10.77.0.1{1,2,3}:9180/?token=$$(cat .cluster-demo/admin.token)"; exit 0; \
		fi; sleep 1; \
	done; echo "no proxy answered within 4 minutes; see: $(CLUSTER) logs hosta" >&2; exit 1

## cluster-demo-down: remove the cluster demo (hosts, their engines' containers, etcd, volumes)
cluster-demo-down:
	$(CLUSTER) down -v --remove-orphans
	rm -rf .cluster-demo

## test: every test, unit and integration (real Docker, nginx, Apache, etcd)
test: unit integration

## unit: unit tests with the race detector (no Docker needed)
unit:
	$(GO) vet ./...
	$(GO) test -race -count=1 ./...

## integration: every image first, then the testcontainers suite
integration: images
	$(GO) test -tags integration -count=1 -timeout 60m -v ./integration/... 2>&1 | tee integration.log | grep -E '^(=== RUN|--- |PASS|FAIL|ok|panic)|_test.go' ; exit $${PIPESTATUS[0]}

## bench: render benchmarks, then the load scenarios on the real stack (table + bench-results.json)
bench: cluster-images
	$(GO) test -run '^$$' -bench . -benchmem ./render/
	$(GO) test -tags 'integration bench' -count=1 -timeout 40m -run '^TestBench(Cluster|TLS)?$$' -v ./integration/ 2>&1 \
		| tee bench.log | grep -vE '🐳|✅|⏳|🔔|🚫|^  [A-Z]|Connected to docker' ; exit $${PIPESTATUS[0]}

## fuzz: fuzz the etcd key/value parser for a minute
fuzz:
	$(GO) test -run '^$$' -fuzz FuzzParseEntry -fuzztime 60s ./store/

## lint: golangci-lint (.golangci.yml: govet, staticcheck, errcheck, errorlint, gofmt, ...), integration files included
lint:
	$(GOLANGCI_LINT) run ./...

clean:
	rm -rf bin images/upstreamd/upstreamd images/wsecho/wsecho integration.log bench.log bench-results.json bench-tls.json
