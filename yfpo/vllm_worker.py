"""One vLLM engine for one checkpoint: ``python -m yfpo.vllm_worker request.json result.json``.

Run as its own process by :mod:`yfpo.evaluate`, because vLLM does not reliably return GPU memory
between models in one process; the process exit does. The result holds the vLLM version and, per
prompt, the text (stop strings excluded, as vLLM does by default) and vLLM's ``finish_reason``
("length": the token budget ran out; "stop": EOS, a stop token id or a stop string).
"""

from __future__ import annotations

import json
import sys


def main(request_path: str, result_path: str) -> None:
    import vllm
    from vllm import LLM, SamplingParams

    r = json.loads(open(request_path).read())
    llm = LLM(model=r["model"], tensor_parallel_size=r["tensor_parallel_size"], dtype=r["dtype"],
              trust_remote_code=r["trust_remote_code"])
    params = SamplingParams(temperature=0.0, top_p=1.0, max_tokens=r["max_tokens"], stop=r["stop"] or None,
                            stop_token_ids=r["stop_token_ids"] or None)
    outputs = llm.generate(r["prompts"], params)
    with open(result_path, "w") as f:
        json.dump({"vllm_version": getattr(vllm, "__version__", None),
                   "outputs": [{"text": o.outputs[0].text, "finish_reason": o.outputs[0].finish_reason}
                               for o in outputs]}, f)


if __name__ == "__main__":
    main(*sys.argv[1:3])
