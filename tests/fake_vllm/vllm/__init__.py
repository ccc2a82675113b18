"""A stand-in for vLLM that records how it is called (tests only; vLLM needs a GPU).

Each call appends one JSON line to $FAKE_VLLM_LOG; every completion is "#### 0".
"""

import json
import os
from types import SimpleNamespace


class SamplingParams:
    def __init__(self, **kwargs):
        self.kwargs = kwargs


class LLM:
    def __init__(self, model, **kwargs):
        self.model, self.kwargs = model, kwargs

    def generate(self, prompts, params):
        with open(os.environ["FAKE_VLLM_LOG"], "a") as f:
            f.write(json.dumps({"pid": os.getpid(), "model": self.model, "llm": self.kwargs,
                                "sampling": params.kwargs, "prompts": prompts}) + "\n")
        return [SimpleNamespace(outputs=[SimpleNamespace(text="#### 0")]) for _ in prompts]
