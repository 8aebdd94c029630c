# voiceface: `make shards` and `make test` set everything up on a fresh Debian/Ubuntu machine.
SHELL := /bin/bash
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

MANIFEST ?=
OUT ?= $(if $(MANIFEST),out/$(basename $(notdir $(MANIFEST))),out/demo)
MIRROR ?=
CONFIG ?=
PRESET ?=
WORKERS ?= 2
PYTEST_ARGS ?=
POOL_ARGS = --workers $(WORKERS) --runner $(RUNNER) $(if $(ADDRESS),--address $(ADDRESS)) $(if $(PRESET),--preset $(PRESET))
PORT ?= 8765
HOST ?=

SYSTEM_TOOLS := ffmpeg ffprobe espeak-ng chromium
APT_PACKAGES := ffmpeg espeak-ng chromium

PREFECT_PORT ?= 4200
CHANNELS ?= manifests/youtubers.csv
RUNNER ?= thread
ADDRESS ?=

.PHONY: shards test train eval bench bench-gpu bench-review serve review publish curate lint format setup system-deps clean

## shards: build shards (the demo with no MANIFEST; else MANIFEST=… OUT=… [MIRROR=…] [CONFIG=…]) [PRESET=wav2pix|…]
shards: setup
ifeq ($(strip $(MANIFEST)),)
	$(BIN)/voiceface demo --out $(OUT) $(POOL_ARGS) $(if $(CONFIG),--config $(CONFIG))
else
	$(BIN)/voiceface build $(MANIFEST) --out $(OUT) $(POOL_ARGS) $(if $(MIRROR),--mirror $(MIRROR)) $(if $(CONFIG),--config $(CONFIG))
endif

## serve: a local Prefect server (UI on 127.0.0.1:$(PREFECT_PORT)) serving the scheduled deployments
serve: setup
	$(BIN)/voiceface serve --start-server --port $(PREFECT_PORT) --channels $(CHANNELS) --workers $(WORKERS)

## test: the whole suite, offline
test: setup
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

## bench: realtime factor per stage (240 s 480p talking head); memory, re-run and Dask figures (tiny clips); speech filters, yield and AV sync on the real clips (../shared/data)
bench: setup
	$(BIN)/python benchmarks/bench_pipeline.py
	$(BIN)/python benchmarks/bench_orchestration.py
	$(BIN)/python benchmarks/bench_loader.py
	$(BIN)/python benchmarks/bench_speech_real.py
	$(BIN)/python benchmarks/bench_yield_real.py
	$(BIN)/python benchmarks/bench_avsync_real.py

## train: MODEL=wav2pix|speech2face|voice2face|cae SHARDS=dir RUN=dir [STEPS=N] [TRAIN_CONFIG=tiny] (resumes RUN/checkpoint.pt)
MODEL ?= wav2pix
# voice2face and cae read utterance voices (utt.npy), which their presets add: without SHARDS, they train on the
# demo built with their preset (made on first use)
PRESET_MODELS := voice2face cae
SHARDS ?= $(if $(filter $(MODEL),$(PRESET_MODELS)),out/demo-$(MODEL),$(OUT))
RUN ?= out/runs/$(MODEL)
train: setup
	@if [ "$(origin SHARDS)" = "file" ] && [ -n "$(filter $(MODEL),$(PRESET_MODELS))" ] && [ ! -d $(SHARDS)/shards ]; then \
	  echo "building the demo with the $(MODEL) preset into $(SHARDS)"; \
	  $(BIN)/voiceface demo --preset $(MODEL) --out $(SHARDS) --workers $(WORKERS); fi
	$(BIN)/voiceface train --model $(MODEL) --shards $(SHARDS) --run $(RUN) $(if $(STEPS),--steps $(STEPS)) $(if $(TRAIN_CONFIG),--config $(TRAIN_CONFIG))

## eval: the seeds' metrics for RUN on SHARDS' val split → RUN/eval.json, RUN/eval.html
eval: setup
	$(BIN)/voiceface eval --run $(RUN) --shards $(SHARDS)

## bench-gpu: VGG-Face faces/s per batch size and precision, fp32-vs-bf16 agreement (BENCH_ARGS=--compile)
bench-gpu: setup
	$(BIN)/python benchmarks/bench_vggface.py $(BENCH_ARGS)

## review: serve the review page for OUT on 127.0.0.1:PORT (HOST=… needs VOICEFACE_REVIEW_TOKEN)
review: setup
	$(BIN)/voiceface review $(OUT) --port $(PORT) $(if $(HOST),--host $(HOST)) $(if $(CONFIG),--config $(CONFIG))

## publish: rewrite OUT's shards so that they honour the review (no media work)
publish: setup
	$(BIN)/voiceface publish $(OUT) $(if $(CONFIG),--config $(CONFIG))

## curate: the Prefect flow: queue OUT, serve the page, wait until the batch is marked done, publish
curate: setup
	$(BIN)/voiceface curate $(OUT) --port $(PORT) $(if $(HOST),--host $(HOST)) $(if $(CONFIG),--config $(CONFIG))

## bench-review: the review page's response times with 10,000 queued windows
bench-review: setup
	$(BIN)/python benchmarks/bench_review.py

lint: setup
	$(BIN)/ruff check pipeline flows trainer tests benchmarks
	$(BIN)/ruff format --check pipeline flows trainer tests benchmarks

format: setup
	$(BIN)/ruff format pipeline flows trainer tests benchmarks

setup: system-deps $(STAMP)

# ffmpeg (with ffprobe), espeak-ng (demo speech) and chromium (browser tests, viewing reports and the review page)
# come from apt; as root directly, else through passwordless sudo.
system-deps:
	@missing=""; for t in $(SYSTEM_TOOLS); do command -v $$t >/dev/null || missing="$$missing $$t"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing system packages ($(APT_PACKAGES)) for:$$missing"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=""; elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then SUDO="sudo"; \
	  else echo "error: need$$missing. Run: sudo apt-get install -y $(APT_PACKAGES)   (then re-run make)"; exit 1; fi; \
	  if ! command -v apt-get >/dev/null; then echo "error: no apt-get. Install$$missing with your package manager (ffmpeg must include ffprobe), then re-run make."; exit 1; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $(APT_PACKAGES) >/dev/null \
	    || { echo "error: apt-get install failed. Run: sudo apt-get install -y $(APT_PACKAGES)"; exit 1; }; \
	fi

$(STAMP): pyproject.toml
	@command -v $(PY) >/dev/null || { echo "error: $(PY) not found. Install Python 3.11 (e.g. apt-get install python3.11 python3.11-venv) or pass PY=/path/to/python3.11"; exit 1; }
	@[ -x $(BIN)/python ] || $(PY) -m venv $(VENV) || { echo "error: could not create $(VENV). Run: sudo apt-get install -y python3.11-venv"; exit 1; }
	$(BIN)/python -m pip install -q --upgrade "pip>=24"
	$(BIN)/python -m pip install -q -e ".[dev]"
	$(BIN)/python -m pipeline.demo.photos  # the demo's portraits from a registry sdist, cached once (then offline)
	@touch $(STAMP)

clean:
	rm -rf out .pytest_cache
