"""One vLLM engine for one checkpoint: ``python -m yfpo.vllm_worker request.json result.json``.

Run as its own process by :mod:`yfpo.evaluate`, because vLLM does not reliably return GPU memory
between models in one process; the process exit does.
"""

from __future__ import annotations

import json
import sys


def main(request_path: str, result_path: str) -> None:
    from vllm import LLM, SamplingParams

    r = json.loads(open(request_path).read())
    llm = LLM(model=r["model"], tensor_parallel_size=r["tensor_parallel_size"], dtype=r["dtype"],
              trust_remote_code=r["trust_remote_code"])
    params = SamplingParams(temperature=0.0, top_p=1.0, max_tokens=r["max_tokens"], stop=r["stop"] or None)
    outputs = llm.generate(r["prompts"], params)
    with open(result_path, "w") as f:
        json.dump([o.outputs[0].text for o in outputs], f)


if __name__ == "__main__":
    main(*sys.argv[1:3])
