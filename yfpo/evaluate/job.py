"""One checkpoint to evaluate: its prompts, decoding settings, and the key its directory must match."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from yfpo.core import artefacts
from yfpo.core.models import load_tokenizer
from yfpo.data.prompts import check_stops, default_stops, eval_prompt, stop_token_ids
from yfpo.evaluate import vllm_worker


@dataclass
class Job:
    """One checkpoint to evaluate, with the key its directory must match."""

    name: str
    model_dir: Path
    out_dir: Path
    eval: DictConfig    # the eval group
    model: DictConfig   # the model group, with the run's own template and loading settings (run_settings)
    engine: DictConfig  # the vllm group: the engine of eval.backend=vllm
    tok: object
    dec: dict
    prompts: dict  # problem id -> prompt
    source: dict
    worker: vllm_worker.Engine  # the command's vLLM worker, started on first use

    @property
    def key(self) -> dict:
        """What the predictions depend on (:mod:`yfpo.core.artefacts`): backend, data, decoding, weights."""
        vllm = self.eval.backend == "vllm"
        return {"backend": self.eval.backend, "source": self.source,
                "engine": OmegaConf.to_container(self.engine, resolve=True) if vllm else None,
                **{k: v for k, v in self.dec.items() if k != "vllm"},  # the version a worker reports is a result
                "weights": artefacts.file_fingerprint(self.model_dir, recursive=False)}


def decoding(e: DictConfig, tok, model_dir: Path) -> dict:
    """The decoding settings of one evaluation (``e``: the ``eval`` group): greedy, budget, stop strings
    and stop token ids (``eval.stop``/``eval.stop_token_ids`` when given, else the prompt layout's defaults)."""
    stop = check_stops(e.stop)
    return {
        "temperature": 0.0, "top_p": 1.0, "max_new_tokens": e.max_new_tokens, "template": e.template,
        "num_fewshot": e.num_fewshot, "fewshot_set": e.fewshot_set if e.num_fewshot else None,
        "stop": stop if stop is not None else default_stops(e.template, e.num_fewshot, e.fewshot_set),
        "stop_token_ids": (list(e.stop_token_ids) if e.stop_token_ids is not None
                           else stop_token_ids(e.template, tok, model_dir)),
    }


def prepare_job(name: str, model_dir: Path, out_dir: Path, e: DictConfig, model: DictConfig, engine: DictConfig,
                problems: list[dict], source: dict, worker: vllm_worker.Engine) -> Job:
    """The :class:`Job` of checkpoint ``model_dir`` (its tokenizer loaded, its prompts written) from the
    ``eval``, ``model`` and ``vllm`` groups of its run (:func:`yfpo.evaluate.run.run_settings`)."""
    tok = load_tokenizer(model, model_dir)
    prompts = {p["id"]: eval_prompt(e.template, p["question"], tok, e.num_fewshot, e.fewshot_set) for p in problems}
    return Job(name, model_dir, out_dir, e, model, engine, tok, decoding(e, tok, model_dir), prompts, source, worker)


def conflicts(job: Job) -> list[str]:
    """Why ``job.out_dir`` cannot be continued or reused: it was made with another key (other
    settings, data or weights). Empty: it can."""
    try:
        artefacts.check(job.out_dir, job.key, f"evaluation {job.out_dir}", "")
    except artefacts.StaleArtefactError as e:
        return [str(e).rstrip(". ")]
    return []
