# Two entry points (README): `make demo` and `make test`. Both set up everything they need
# in ./.venv from requirements/lock.txt, so a fresh clone on a fresh machine just works.
PYTHON       ?= python3
VENV         := .venv
TOOLS        := .venv-tools
UV           := $(TOOLS)/bin/uv
UV_VERSION   := 0.13.9
LOCK         := requirements/lock.txt
TORCH_WHEELS ?= /opt/wheels
FIND_LINKS   := $(if $(wildcard $(TORCH_WHEELS)),--find-links $(TORCH_WHEELS),)
MEDIA        ?= ../shared/media
OUT          ?= out/demo
PYTEST_ARGS  ?=

.PHONY: demo test test-fast lock bench bench-dedup bench-vidsuite clean
export PYANNOTE_METRICS_ENABLED := false
export HF_HUB_OFFLINE := 1

$(UV):
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install -q uv==$(UV_VERSION)

# torchaudio from PyPI is a CUDA build: its compiled libraries cannot load against the CPU
# torch, and pyannote/whisperx only need its Python code (audio is passed in memory): delete them.
# --compile-bytecode: uv writes no .pyc by default, and where PYTHONDONTWRITEBYTECODE is set (the
# development machine here, many container images) every process compiles torch, Beam and pyannote
# from source again: `import pyannote.audio` 10.9 s -> 6.6 s, for ~18 s once at install (bench/README.md).
$(VENV)/.installed: $(LOCK) pyproject.toml | $(UV)
	test -x $(VENV)/bin/python || $(UV) venv -q --python $(PYTHON) $(VENV)
	$(UV) pip sync -q --compile-bytecode --python $(VENV)/bin/python $(FIND_LINKS) $(LOCK)
	$(UV) pip install -q --python $(VENV)/bin/python --no-deps -e .
	rm -f $(VENV)/lib/python*/site-packages/torchaudio/lib/*.so
	touch $@

demo: $(VENV)/.installed
	@test -d $(MEDIA) || { echo "make demo: $(MEDIA) not found (MEDIA=/path/to/media to choose)"; exit 2; }
	$(VENV)/bin/mmcurate run $(MEDIA) --output $(OUT)

# Second step: the tests that put a threshold on a real model's score (marker model_score) again,
# with CTranslate2, ATen and oneDNN held to AVX2 kernels. int8 kernels differ per instruction set
# and so do the scores (whisper-base's no_speech_prob on invented text: 0.67-0.74 on an
# AVX-512 CPU, down to 0.53 on AVX2), so a threshold measured on one CPU must hold on the other.
# On a CPU with nothing above AVX2 (no AVX-512, AVX-VNNI or AMX) the libraries already pick their
# AVX2 kernels, so step 1 ran exactly what this step would run (same transcripts and torch
# outputs, bit for bit: bench/README.md); it is skipped there with a line saying so.
# AVX2_PASS=always runs it anyway, AVX2_PASS=never never.
AVX2_ISA_ENV := CT2_FORCE_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2
ABOVE_AVX2   := $(shell grep -m1 -owE 'avx512f|avx_vnni|amx_tile' /proc/cpuinfo 2>/dev/null)
AVX2_PASS    ?= $(if $(ABOVE_AVX2),always,never)
comma        := ,
# pytest-xdist worker processes: most tests keep one core busy (Beam's bundle loop, one model
# call at a time), so two of them fill a 2-core machine (bench/README.md, "Suite times"). A
# file's tests stay on one worker (loadfile): module fixtures (a model, a whole run) are built once;
# the longest files go first (tests/conftest.py).
TEST_WORKERS ?= 2
XDIST        := $(if $(filter-out 0 1,$(TEST_WORKERS)),-n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder,)

# Headless Chromium renders the audit report in tests/test_quality_report.py: Debian's package,
# installed when missing (CI runs as root on a fresh machine). Without it those tests skip.
CHROMIUM     := /usr/bin/chromium
$(CHROMIUM):
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	else echo "make: $(CHROMIUM) missing and not root: the HTML report tests will skip"; fi

# datasets 5.2 (the reader of `mmcurate export --format hf` in tests/test_export.py) needs
# huggingface-hub >= 1.31, outside the lock's pin: its own venv from a pinned file, no torch.
HF_VENV      := .venv-hf
$(HF_VENV)/.installed: tests/requirements-hf.txt | $(UV)
	test -x $(HF_VENV)/bin/python || $(UV) venv -q --python $(PYTHON) $(HF_VENV)
	$(UV) pip sync -q --compile-bytecode --python $(HF_VENV)/bin/python tests/requirements-hf.txt
	touch $@

test: $(VENV)/.installed $(HF_VENV)/.installed | $(CHROMIUM)
	$(VENV)/bin/python -m pytest $(XDIST) $(PYTEST_ARGS)
ifeq ($(AVX2_PASS),always)
	$(AVX2_ISA_ENV) $(VENV)/bin/python -m pytest $(XDIST) -m model_score
else
	@echo "make test: no AVX2 pass: $(if $(ABOVE_AVX2),AVX2_PASS=$(AVX2_PASS) was given; this CPU has $(ABOVE_AVX2)$(comma) so the model_score thresholds were NOT checked on AVX2 kernels,this CPU has no AVX-512$(comma) AVX-VNNI or AMX$(comma) so the model_score tests above already ran on AVX2 kernels (AVX2_PASS=always runs them again))"
endif

# The edit-test loop: no real model (tests/conftest.py skips any test that would load one in
# this process) and none of the slow, prod or model_score tests. What CI runs is `make test`.
test-fast: $(VENV)/.installed
	MMCURATE_TEST_TIER=fast $(VENV)/bin/python -m pytest -q $(XDIST) -m "not slow and not prod and not model_score" $(PYTEST_ARGS)

bench: $(VENV)/.installed
	$(VENV)/bin/python bench/bench_foundation.py
	$(VENV)/bin/python bench/bench_speech.py
	$(VENV)/bin/python bench/bench_video.py

# datatrove 0.10.1 (the dedup bench's baseline) needs huggingface-hub >= 1.6, outside this
# project's pins: it gets its own venv, used only by bench/bench_dedup.py.
.venv-datatrove/bin/python: bench/requirements-datatrove.txt | $(UV)
	$(UV) venv -q --python $(PYTHON) .venv-datatrove
	$(UV) pip sync -q --compile-bytecode --python .venv-datatrove/bin/python bench/requirements-datatrove.txt

bench-dedup: $(VENV)/.installed .venv-datatrove/bin/python
	$(VENV)/bin/python bench/bench_dedup.py --datatrove-python .venv-datatrove/bin/python

# The video edit suite's reference hashes (PDQ, vPDQ: bench/requirements-videohash.txt) build from
# source in their own venv: vpdq needs FFmpeg's development libraries (Debian's, installed when
# missing and root, as for Chromium above). TMK (tmkpy) is not built here: bench/README.md.
VIDEOHASH_APT := libavcodec-dev libavformat-dev libavdevice-dev libavutil-dev libswscale-dev \
                 libswresample-dev libavfilter-dev pkg-config cmake
.venv-videohash/bin/python: bench/requirements-videohash.txt | $(UV)
	@pkg-config --exists libavcodec 2>/dev/null || { if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(VIDEOHASH_APT); \
	else echo "make: FFmpeg development libraries missing and not root: vpdq will not build"; fi; }
	$(UV) venv -q --python $(PYTHON) .venv-videohash
	grep -v '^vpdq==' bench/requirements-videohash.txt > .venv-videohash/base.txt
	$(UV) pip install -q --python .venv-videohash/bin/python -r .venv-videohash/base.txt
	$(UV) pip install -q --python .venv-videohash/bin/python $$(grep '^vpdq==' bench/requirements-videohash.txt) \
	  || echo "make: vpdq did not build: bench-vidsuite runs without it"

bench-vidsuite: $(VENV)/.installed .venv-videohash/bin/python
	$(VENV)/bin/python bench/bench_vidsuite.py --ref-python .venv-videohash/bin/python

# Re-resolve the lock (needs the package index); commit the result.
lock: | $(UV)
	rm -f $(LOCK)  # an existing output file would act as a preference
	$(UV) pip compile -q pyproject.toml --extra prod --extra test --extra bench --extra airflow --override requirements/overrides.txt \
	  $(FIND_LINKS) --python-version 3.11 --no-header --emit-find-links -o $(LOCK)

clean:
	rm -rf $(VENV) $(TOOLS) out
