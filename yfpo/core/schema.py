"""Typed schemas of the config groups: each group's keys, types and defaults, written once.

Groups whose keys are another library's (``trainer``: Lightning's Trainer arguments) or few
(``logger``) have none. Each schema is stored in Hydra's ConfigStore as ``<group>/schema`` and every YAML of the group
starts from it (``defaults: [schema, _self_]``). A key a YAML leaves out takes the default here;
a misspelt key, a value of the wrong type (``method.nll_weight=abc``) or a choice outside its set
(``method.loss=dop``: the :class:`Choice` enums below) is refused when the config is composed, naming
the key. The top-level keys every stage reads (``seed``, ``beta``, ``lambda``) and the ``optim`` and
``pairs`` nodes are typed by :data:`ROOT`. Checks that span keys (FDT needs a pairwise loss) stay in
one function per stage (:func:`check_method` for the method).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf
from omegaconf.nodes import FloatNode, IntegerNode

from yfpo.core.errors import ConfigError


class Choice(str, Enum):
    """A config value from a fixed set. It compares, hashes and prints as its string (``method.loss == "dpo"``,
    ``f"{method.loss}"``), and OmegaConf refuses any other value when the config is composed, naming the key
    and the choices."""

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)

    def __repr__(self) -> str:
        return repr(self.value)


def choice(name: str, values: str) -> type[Choice]:
    """A :class:`Choice` whose members' names are their values (so a config string is its member)."""
    return Choice(name, {v: v for v in values.split()})


Loss = choice("Loss", "sft dpo yfpo")
YfpoForm = choice("YfpoForm", "margin sigmoid")  # L_DPO - lambda * Delta_N, or -log sigmoid(h + lambda * Delta_N)
NeuronScore = choice("NeuronScore", "raw normalised")
PairMode = choice("PairMode", "step full")  # Step-DPO steps, or whole solutions
Selector = choice("Selector", "attnlrp activation random")  # yfpo/neurons/selectors.py
LrpVariant = choice("LrpVariant", "attnlrp cp_lrp")
ReferenceMode = choice("ReferenceMode", "live precompute")
Backend = choice("Backend", "hf vllm")  # transformers' generate, or the vLLM engine
Template = choice("Template", "alpaca chat")  # yfpo/data/prompts.py
FewshotSet = choice("FewshotSet", "gsm8k minerva_math")
Dtype = choice("Dtype", "float32 bfloat16 float16")
Schedule = choice("Schedule", "cosine linear constant")


@dataclass
class MethodConfig:
    """``method``: the training objective (conf/method/*.yaml)."""

    name: str                    # the method's name in run directories and tables
    loss: Loss                   # sft | dpo | yfpo
    fdt: bool = False            # Focused Differentiation Training of the LM head (pairwise losses only)
    track_neurons: bool = False  # log the neuron margin of neurons.path when the file exists (dpo, fdt)
    form: YfpoForm = YfpoForm.margin  # yfpo: margin (L_DPO - lambda*Delta_N) | sigmoid (-log sigmoid(h + lambda*Delta_N))
    neuron_score: NeuronScore = NeuronScore.raw  # raw: the paper's mean activation | normalised: standardised by the file's (mu, sigma)
    nll_weight: float = 0.0      # alpha of the NLL (RPO) term on the chosen response: L + alpha * NLL(y_w)


def check_method(method: DictConfig) -> None:
    """Raise :class:`ConfigError` naming the ``method`` value that cannot work with another."""
    if method.fdt and method.loss == "sft":
        raise ConfigError("method.fdt needs a pairwise loss (dpo or yfpo), not sft")
    if method.nll_weight < 0:
        raise ConfigError(f"method.nll_weight={method.nll_weight}: give a weight >= 0 (0: no NLL term)")


@dataclass
class ModelConfig:
    """``model``: the policy's weights, tokenizer and prompt layout (conf/model/*.yaml)."""

    name: str                          # names runs, cached files (model_tag) and tables
    path: str                          # hub id (mirror / HF cache / download, yfpo/core/hub.py) or a local directory
    prepare: Optional[str] = None      # null: path is there | build_tiny | gguf | train:<experiment> (python -m yfpo.prepare)
    made_by: Optional[str] = None      # the command that makes a local path, for the error when it is missing
    dtype: Dtype = Dtype.float32       # master weights; trainer.precision=bf16-mixed computes in bf16
    attn_implementation: str = "auto"  # auto: flash_attention_2 when flash-attn and a GPU are there, else sdpa
    gradient_checkpointing: bool = False
    trust_remote_code: bool = False    # run the repository's own modelling code: only when the config says so
    template: Template = Template.alpaca  # alpaca (base models, Step-DPO) | chat (instruct models' chat template)
    add_bos: bool = True               # prepend BOS when the tokenizer has one (Step-DPO)
    neuron_top_k: int = 1024           # the paper's Top-1024 math neurons
    gguf_package: Optional[str] = None  # prepare=gguf: the installed package that ships gguf_file
    gguf_file: Optional[str] = None
    vocab_size: Optional[int] = None   # prepare=build_tiny: the tokenizer's size, trained offline
    init_seed: Optional[int] = None    # prepare=build_tiny: the random weights' seed (the model's, not the runs')
    corpus_rows: Optional[int] = None  # prepare=build_tiny: SFT rows the tokenizer is trained on
    arch: Optional[Dict[str, Any]] = None  # prepare=build_tiny: the Qwen2Config fields of the architecture


@dataclass
class DataConfig:
    """``data``: the training rows and how they are encoded (conf/data/*.yaml)."""

    name: str
    path: str                          # hub id, or a local .jsonl/.parquet with the dataset's fields
    split: str = "train"
    hub_config: Optional[str] = None   # the hub dataset's config name
    pair_mode: PairMode = PairMode.step  # step: (chosen, rejected) steps | full: (full_chosen, full_rejected)
    question_field: str = "question"   # SFT rows: the question and the worked solution SFT learns
    answer_field: str = "answer"
    template: Template = "${model.template}"  # type: ignore[assignment]
    add_bos: bool = "${model.add_bos}"  # type: ignore[assignment]  (an interpolation, resolved to a bool)
    append_eos: Optional[bool] = None  # null: EOS after full responses only (Step-DPO's step responses get none)
    subset_size: Optional[int] = None  # a seeded random sample of this many rows (the paper's 2K subset)
    subset_seed: int = 42
    subset_file: Optional[str] = None  # write the sample here once and reuse it (every run then sees the same rows)
    max_length: int = 1024             # Step-DPO: 1024 tokens, prompt 512
    max_prompt_length: int = 512
    batch_size: int = 2                # rows per process and step
    global_batch_size: Optional[int] = None  # rows per optimizer step over all processes: sets the accumulation
    num_workers: int = 0
    group_by_length: Optional[int] = None  # a window of N shuffled rows, each sorted by length (less padding)


@dataclass
class NeuronsConfig:
    """``neurons``: how the math neurons are selected and where their file is (conf/neurons/*.yaml)."""

    selector: Selector                 # attnlrp | activation | random (yfpo/neurons/selectors.py)
    lrp_variant: Optional[LrpVariant] = None  # attnlrp: attnlrp (the paper) | cp_lrp (conserves relevance through attention)
    top_k: int = "${model.neuron_top_k}"  # type: ignore[assignment]
    seed: int = 0                      # the selection's own seed (which samples; random: which neurons), never the training seed
    overwrite: bool = False
    device: str = "auto"               # cuda when available
    data: str = "${synthetic.dir}/sft.jsonl"  # GSM8K layout (question, answer) or Math-Step-DPO layout; hub id or file
    num_samples: int = 256
    batch_size: int = 8
    path: str = "${cache_dir}/neurons/${model_tag}-${neurons.selector}-k${neurons.top_k}-s${neurons.seed}.safetensors"


@dataclass
class ReferenceConfig:
    """``reference``: the frozen reference model (conf/reference/*.yaml)."""

    mode: ReferenceMode = ReferenceMode.live  # live: a frozen copy beside the policy | precompute: a table made before step 1
    dtype: Optional[Dtype] = None      # null: the policy's dtype; bfloat16 halves a live reference's memory
    cache_dir: str = "${cache_dir}/reference"
    cache_path: Optional[str] = None   # null: <cache_dir>/<model tag>-<hash of the settings>.safetensors


@dataclass
class EvalConfig:
    """``eval``: one benchmark and how it is generated and graded (conf/eval/*.yaml)."""

    task: str                          # the grader (yfpo/evaluate/grading.py)
    default_path: str                  # the benchmark's own source
    name: Optional[str] = None         # results go to <run>/eval/<name>/<ckpt>/ (null: the task)
    path: str = "${eval.default_path}"  # another source (a local copy) is evaluated under its own name
    split: str = "test"
    hub_config: Optional[str] = None
    question_field: str = "question"
    gold_field: str = "answer"
    gold_from_solution: bool = False   # gold = text after the solution's last "####" (GSM8K layout)
    id_field: Optional[str] = None     # null: the row index
    limit: Optional[int] = None        # only the first N problems (quick looks)
    sample: Optional[int] = None       # a seeded random N of the (limited) rows instead of all (a dev slice)
    sample_seed: int = 0
    backend: Backend = Backend.hf      # hf (transformers, CPU or GPU) | vllm (the engine of `vllm.*` in config.yaml)
    template: Template = "${model.template}"  # type: ignore[assignment]  (the prompt training used)
    max_new_tokens: int = 2048         # Step-DPO's evaluation budget (vLLM max_tokens 2048)
    stop: Optional[List[str]] = None   # null: the prompt layout's stop strings (yfpo/data/prompts.py)
    stop_token_ids: Optional[List[int]] = None  # null: EOS, generation_config's EOS ids and (chat) end-of-turn tokens
    num_fewshot: int = 0               # 0: the zero-shot Step-DPO prompt (the YFPO tables); k: k fixed worked examples first
    fewshot_set: FewshotSet = FewshotSet.gsm8k  # gsm8k: 8 shots, 'Q: .. A: .. The answer is N.' | minerva_math: 4 shots
    compare_backends: int = 0          # N > 0: instead of evaluating, run the first N problems on hf AND vllm and compare
    warn_rate: float = 0.05            # warn when the truncated share or the share with no marked answer exceeds this
    batch_size: int = 32
    unfinished: bool = False           # also evaluate runs whose training has not finished (no DONE): a look at their checkpoints so far


@dataclass
class OptimConfig:
    """``optim``: AdamW, linear warmup then ``schedule`` decay (the values: conf/config.yaml)."""

    lr: float
    betas: List[float]
    eps: float
    weight_decay: float
    warmup_ratio: float
    schedule: Schedule
    min_lr_ratio: float
    fused: bool


@dataclass
class PairsConfig:
    """``pairs``: ``python -m yfpo.pairs``, on-policy pairs sampled from ``model`` (the values: conf/config.yaml)."""

    questions: str
    question_field: str
    answer_field: str
    task: str
    checker: Optional[str]
    mode: PairMode
    num_questions: int
    samples: int
    per_question: int
    temperature: float
    top_p: float
    max_new_tokens: int
    batch_size: int
    chunk_questions: int
    seed: int
    device: str
    backend: Backend
    dataset_name: str
    out: str


# The primary config's typed keys (``lambda`` is a Python keyword, so this is a node, not a dataclass);
# conf/config.yaml gives the values and adds the untyped rest.
ROOT = OmegaConf.create({
    "seed": IntegerNode(None), "beta": FloatNode(None), "lambda": FloatNode(None),
    "optim": OmegaConf.structured(OptimConfig), "pairs": OmegaConf.structured(PairsConfig),
})
ConfigStore.instance().store(name="schema", node=ROOT)

for _group, _node in {"method": MethodConfig, "model": ModelConfig, "data": DataConfig, "neurons": NeuronsConfig,
                      "reference": ReferenceConfig, "eval": EvalConfig}.items():
    ConfigStore.instance().store(group=_group, name="schema", node=_node)


def role(method) -> str | None:
    """The one rule for what a run does with ``neurons.path``: ``"rewarded"`` (``method.loss=yfpo``:
    the file is required), ``"tracked"`` (``method.track_neurons``: its margin is logged when the
    file exists, the loss ignores it) or ``None``."""
    if method.loss == "yfpo":
        return "rewarded"
    return "tracked" if method.track_neurons else None
