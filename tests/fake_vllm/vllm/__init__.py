"""A stand-in for vLLM that records how it is called (tests only). The real engine runs in
tests/test_vllm.py; this one is kept for what a CPU cannot show (tensor parallelism) and for
completions chosen by the test (stop handling, truncation, scoring of given texts).

Each call appends one JSON line to $FAKE_VLLM_LOG. The completion of a prompt is "#### 0" with
finish_reason "stop", or what $FAKE_VLLM_TEXTS (a JSON file {prompt: text or {text, finish_reason}})
gives it; like vLLM, a completion is cut before its first stop string (finish_reason "stop").
"""

import json
import os
from types import SimpleNamespace

__version__ = "0.0.0+fake"


class SamplingParams:
    def __init__(self, **kwargs):
        self.kwargs = kwargs


class LLM:
    def __init__(self, model, **kwargs):
        self.model, self.kwargs = model, kwargs

    def _complete(self, prompt, params):
        texts = os.environ.get("FAKE_VLLM_TEXTS")
        out = json.loads(open(texts).read()).get(prompt, "#### 0") if texts else "#### 0"
        text, reason = (out, "stop") if isinstance(out, str) else (out["text"], out["finish_reason"])
        cuts = [i for i in (text.find(s) for s in params.kwargs.get("stop") or []) if i >= 0]
        if cuts:
            return SimpleNamespace(text=text[: min(cuts)], finish_reason="stop")
        return SimpleNamespace(text=text, finish_reason=reason)

    def generate(self, prompts, params, **kwargs):
        with open(os.environ["FAKE_VLLM_LOG"], "a") as f:
            f.write(json.dumps({"pid": os.getpid(), "model": self.model, "llm": self.kwargs,
                                "sampling": params.kwargs, "prompts": prompts}) + "\n")
        return [SimpleNamespace(outputs=[self._complete(p, params)] * params.kwargs.get("n", 1)) for p in prompts]
