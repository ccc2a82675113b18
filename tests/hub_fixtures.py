"""Local copies of the four hub datasets, with their hub repositories' layouts and schemas.

Each is written as ``<mirror>/<org>/<name>/`` exactly as ``hf download <id> --repo-type dataset
--local-dir`` lays it out (file names, README configs, column types), with a few made-up rows.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

GSM8K = "openai/gsm8k"
MATH500 = "HuggingFaceH4/MATH-500"
STEP_DPO = "xinlai/Math-Step-DPO-10K"
NUMINA = "AI-MO/NuminaMath-CoT"


def _parquet(path: Path, rows: list[dict], schema: pa.Schema) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)


def gsm8k_rows(n: int, offset: int = 0) -> list[dict]:
    return [{"question": f"Tom has {i + 2} apples and buys {i + 3} more. How many apples does he have?",
             "answer": f"Tom has {i + 2} + {i + 3} = <<{i + 2}+{i + 3}={2 * i + 5}>>{2 * i + 5} apples.\n#### {2 * i + 5}"}
            for i in range(offset, offset + n)]


def step_dpo_rows(n: int) -> list[dict]:
    return [{
        "dataset": "MATH_Rephrased" if i % 2 else "GSM_AnsAug",
        "prompt": f"What is {i} + {i + 1}?",
        "initial_reason_steps": "Let's think step by step.\nStep 1: We add the two numbers.\n",
        "chosen": f"Step 2: {i} + {i + 1} = {2 * i + 1}. The answer is: {2 * i + 1}",
        "rejected": f"Step 2: {i} + {i + 1} = {2 * i + 2}. The answer is: {2 * i + 2}",
        "full_chosen": f"Step 1: We add the two numbers.\nStep 2: {i} + {i + 1} = {2 * i + 1}. The answer is: {2 * i + 1}",
        "full_rejected": f"Step 1: We add the two numbers.\nStep 2: {i} + {i + 1} = {2 * i + 2}. The answer is: {2 * i + 2}",
        "answer": str(2 * i + 1),
    } for i in range(n)]


def numina_rows(n: int) -> list[dict]:
    rows = []
    for i in range(n):
        problem, solution = f"Compute ${i} \\times 3$.", f"We multiply: ${i} \\times 3 = {3 * i}$. So the answer is $\\boxed{{{3 * i}}}$."
        rows.append({"source": "synthetic_math", "problem": problem, "solution": solution,
                     "messages": [{"content": problem, "role": "user"}, {"content": solution, "role": "assistant"}]})
    return rows


def write_mirror(mirror: Path, n: int = 40) -> Path:
    """The four repositories under ``mirror``; returns ``mirror``."""
    text = pa.string()
    gsm = mirror / GSM8K
    for config in ("main", "socratic"):
        for split, rows in (("train", gsm8k_rows(n)), ("test", gsm8k_rows(n // 2, offset=1000))):
            _parquet(gsm / config / f"{split}-00000-of-00001.parquet", rows, pa.schema([("question", text), ("answer", text)]))
    (gsm / "README.md").write_text(
        "---\nconfigs:\n"
        + "".join(f"- config_name: {c}\n  data_files:\n  - split: train\n    path: {c}/train-*\n"
                  f"  - split: test\n    path: {c}/test-*\n" for c in ("main", "socratic"))
        + "---\n# GSM8K\n")

    math = mirror / MATH500
    math.mkdir(parents=True, exist_ok=True)
    (math / "test.jsonl").write_text("".join(json.dumps({
        "problem": f"What is ${i}^2$?", "solution": f"${i}^2 = {i * i}$, so the answer is $\\boxed{{{i * i}}}$.",
        "answer": str(i * i), "subject": "Algebra", "level": 1 + i % 5, "unique_id": f"test/algebra/{i}.json",
    }) + "\n" for i in range(n)))
    (math / "README.md").write_text("---\nconfigs:\n- config_name: default\n  data_files:\n  - split: test\n    path: test.jsonl\n---\n")

    fields = ["dataset", "prompt", "initial_reason_steps", "chosen", "rejected", "full_chosen", "full_rejected", "answer"]
    _parquet(mirror / STEP_DPO / "data" / "train-00000-of-00001.parquet", step_dpo_rows(n), pa.schema([(f, text) for f in fields]))

    message = pa.struct([("content", text), ("role", text)])
    schema = pa.schema([("source", text), ("problem", text), ("solution", text), ("messages", pa.list_(message))])
    rows = numina_rows(n)
    _parquet(mirror / NUMINA / "data" / "train-00000-of-00002.parquet", rows[: n // 2], schema)
    _parquet(mirror / NUMINA / "data" / "train-00001-of-00002.parquet", rows[n // 2 :], schema)
    _parquet(mirror / NUMINA / "data" / "test-00000-of-00001.parquet", numina_rows(4), schema)
    return mirror
