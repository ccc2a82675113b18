"""``python -m yfpo.pairs [overrides]``: on-policy preference pairs sampled from a model, graded, and
written in the Math-Step-DPO-10K layout, so that training reads them with ``data.path=<file>``.

For each of ``pairs.num_questions`` questions the model samples ``pairs.samples`` completions of the
training prompt (temperature ``pairs.temperature``). A completion is *correct* when its answer grades
right (``pairs.task``) and, when a step checker is configured (``pairs.checker``), every step is right
too; otherwise it is *incorrect*. Each question with both kinds gives up to ``pairs.per_question``
pairs:

- ``full`` mode: a correct and an incorrect completion, whole;
- ``step`` mode (needs a checker): an incorrect completion whose first wrong step the checker finds,
  and a correct completion that shares every step before it. ``initial_reason_steps`` holds that
  shared correct prefix, ``chosen``/``rejected`` the first differing step.

Questions are processed in chunks; each finished chunk is appended to ``<out>.partial.jsonl``, and
each chunk's sampling is seeded from ``pairs.seed`` and its index, so a re-run after a crash
continues and produces the very file an uninterrupted run would. ``pairs.backend=vllm`` samples
every chunk left in one vLLM engine (:mod:`yfpo.evaluate.vllm_worker`), one request of ``n=pairs.samples``
per question with the chunk's seed; ``hf`` samples with transformers' ``generate``. ``<out>.meta.json`` reports
sampled accuracy, pairs per question and what was filtered out, and why.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from yfpo.core import artefacts
from yfpo.data import synthetic
from yfpo.evaluate import vllm_worker
from yfpo.core.config import compose_config
from yfpo.data.rows import DataError, load_rows, sft_fields, validate_rows, write_jsonl
from yfpo.core.errors import ConfigError, run_cli
from yfpo.evaluate.generation import generate
from yfpo.evaluate.grading import gold_answer, grade
from yfpo.core.models import load_model, load_tokenizer, weights_fingerprint
from yfpo.core.models import device_for
from yfpo.assets.prepare import ensure_model, ensure_synthetic
from yfpo.data.prompts import LEAD, default_stops, format_prompt, stop_token_ids
from yfpo.core.log import log

# Step checkers: (question, completion) -> index of the first wrong line, or None when all are right.
CHECKERS: dict[str, Callable[[str, str], int | None]] = {"synthetic": synthetic.first_wrong_step}


def _steps(text: str) -> list[str]:
    return [l for l in text.strip().splitlines() if l.strip()]


def pairs_for_question(question: str, completions: list[str], correct: list[bool], first_wrong: list[int | None],
                       mode: str, per_question: int, rng: random.Random) -> tuple[list[dict], str | None]:
    """Up to ``per_question`` pair rows for one question, or the reason there are none.

    ``first_wrong[i]`` is the checker's first wrong line of completion ``i`` (None: all right, or
    no checker). Duplicate completions count once; empty ones not at all.
    """
    seen, kept = set(), []
    for i in range(len(completions)):
        if completions[i].strip() and completions[i] not in seen:  # an empty sample is no response to train on
            seen.add(completions[i])
            kept.append(i)
    good = [i for i in kept if correct[i]]
    bad = [i for i in kept if not correct[i]]
    if not good:
        return [], "no correct sample"
    if not bad:
        return [], "no incorrect sample"
    rows = []
    rng.shuffle(good)
    rng.shuffle(bad)
    if mode == "full":
        for g, b in zip(good, bad):
            rows.append({"initial_reason_steps": LEAD, "chosen": completions[g], "rejected": completions[b],
                         "full_chosen": completions[g], "full_rejected": completions[b]})
    else:
        for b in bad:
            k, rejected = first_wrong[b], _steps(completions[b])
            if k is None or k >= len(rejected):
                continue  # graded wrong but no wrong step (none found, or it stops before its answer): nothing to contrast
            for g in good:
                chosen = _steps(completions[g])
                if len(chosen) > k and chosen[:k] == rejected[:k] and chosen[k] != rejected[k]:
                    prefix = LEAD + "".join(s + "\n" for s in chosen[:k])
                    rows.append({"initial_reason_steps": prefix, "chosen": chosen[k], "rejected": rejected[k],
                                 "full_chosen": "\n".join(chosen[k:]), "full_rejected": "\n".join(rejected[k:])})
                    good.remove(g)
                    break
        if not rows:
            return [], "no shared correct prefix"
    return rows[:per_question], None


def check_pairs_config(pairs: DictConfig) -> None:
    """Raise :class:`ConfigError` naming the ``pairs`` value that cannot work, before anything loads."""
    if pairs.checker is not None and pairs.checker not in CHECKERS:
        raise ConfigError(f"pairs.checker={pairs.checker!r}: choose null or one of {sorted(CHECKERS)}")
    if pairs.mode == "step" and pairs.checker is None:
        raise ConfigError("pairs.mode=step needs a step checker (pairs.checker) to find the first wrong step")


def grade_and_pair(pairs: DictConfig, chunk: list[dict], texts: list[str], fields: tuple[str, str], start: int,
                   counts: Counter, correct_per_question: list[int], model_name: str) -> list[dict]:
    """The pair rows of one chunk of questions, from their ``pairs.samples`` completions each (``texts``,
    question by question); tallies ``counts`` and appends each question's number of right samples."""
    q_field, a_field = fields
    check = CHECKERS[pairs.checker] if pairs.checker else None
    new_rows = []
    for j, r in enumerate(chunk):
        completions = texts[j * pairs.samples : (j + 1) * pairs.samples]
        gold = gold_answer(pairs.task, r[a_field])
        answer_ok = [grade(pairs.task, c, gold) for c in completions]
        first_wrong = [check(r[q_field], LEAD + c) if check else None for c in completions]
        correct = [ok and w is None for ok, w in zip(answer_ok, first_wrong)]
        counts["samples"] += len(completions)
        counts["answer_correct"] += sum(answer_ok)
        counts["correct"] += sum(correct)
        correct_per_question.append(sum(correct))
        counts["right_answer_wrong_step"] += sum(ok and not c for ok, c in zip(answer_ok, correct))
        made, why = pairs_for_question(r[q_field], completions, correct, first_wrong, pairs.mode, pairs.per_question,
                                       random.Random(pairs.seed + start + j))
        counts[f"skipped: {why}"] += why is not None
        for pair in made:
            new_rows.append({"dataset": pairs.dataset_name, "prompt": r[q_field], **pair, "answer": gold, "model": model_name})
    return new_rows


def summary_of(pairs: DictConfig, n: int, counts: Counter, correct_per_question: list[int]) -> dict:
    """The ``.meta.json`` figures of a pairs file made from ``n`` questions."""
    return {
        "questions": n, "samples_per_question": pairs.samples, "pairs": counts["pairs"],
        "pairs_per_question": counts["pairs"] / max(n, 1),
        "sampled_accuracy": counts["answer_correct"] / max(counts["samples"], 1),
        "sampled_accuracy_all_steps_right": counts["correct"] / max(counts["samples"], 1) if pairs.checker else None,
        "pass_at_k": sum(k > 0 for k in correct_per_question) / max(n, 1),  # k = samples_per_question
        "correct_per_question": correct_per_question,
        "right_answer_wrong_step": counts["right_answer_wrong_step"],
        "skipped": {k.removeprefix("skipped: "): v for k, v in counts.items() if k.startswith("skipped: ") and v},
    }


@dataclass(frozen=True)
class PairsJob:
    """What pair sampling reads: its config groups, and where the model is found and what it is called."""

    pairs: DictConfig      # the pairs group: questions, sampling, grading, output path
    model: DictConfig      # the model group: the policy the pairs are sampled from
    data: DictConfig       # the data group: its template lays out the prompts
    vllm: DictConfig       # the vllm group: the engine of pairs.backend=vllm
    synthetic: DictConfig  # the synthetic group: made first when the questions or the model come from it
    hub: DictConfig        # the hub group: where models and questions are read
    cache_dir: str
    model_tag: str


def make_pairs(job: PairsJob, overrides: list[str] | None = None) -> Path:
    """Sample, grade and pair as ``job.pairs`` says; returns the pairs file (skipped when it exists).
    Resumable: each chunk of ``pairs.chunk_questions`` questions is sampled with its own seed and
    appended to ``<out>.partial.jsonl``, its progress to ``<out>.progress.json``."""
    pairs = job.pairs
    check_pairs_config(pairs)
    out = Path(pairs.out)
    ensure_synthetic(job.synthetic, pairs.questions)
    path = ensure_model(job.model, cache_dir=job.cache_dir, hub_cfg=job.hub, syn=job.synthetic, overrides=overrides)
    model = load_model(job.model, path)
    weights = weights_fingerprint(model)
    engine = OmegaConf.to_container(job.vllm, resolve=True) if pairs.backend == "vllm" else None
    # on-policy: pairs are made from these weights, this prompt layout and these questions
    key = {"model": job.model_tag, "weights": weights, "template": job.data.template,
           "questions": artefacts.source_fingerprint(pairs.questions, job.hub.get("mirror")),
           "config": OmegaConf.to_container(pairs, resolve=True),
           "engine": engine}
    if artefacts.kept(out, key, f"pairs file {out}", f"Delete {out} (and {out.name}.meta.json) to sample again.",
                      "delete it to sample again"):
        return out
    tokenizer = load_tokenizer(job.model, path)
    if pairs.backend == "hf":
        model = model.to(device_for(pairs.device)).eval()
    else:
        del model  # vLLM loads its own copy, in its own process (on a GPU, two copies would not fit)
    q_field, a_field = sft_fields(pairs)
    rows = load_rows(pairs.questions, hub=job.hub, key="pairs.questions")
    validate_rows(rows, (q_field, a_field), pairs.questions)
    if pairs.num_questions > len(rows):  # the file name records num_questions: it must be what was sampled
        raise ConfigError(f"pairs.num_questions={pairs.num_questions}, but {pairs.questions} has {len(rows)} rows: "
                          f"set pairs.num_questions={len(rows)} or fewer")
    rows = rows[: pairs.num_questions]
    stop = default_stops(job.data.template)
    stop_ids = stop_token_ids(job.data.template, tokenizer, path)

    out.parent.mkdir(parents=True, exist_ok=True)
    partial, progress = out.with_name(out.name + ".partial.jsonl"), out.with_name(out.name + ".progress.json")
    identity = artefacts.stringify(key)
    state = (json.loads(progress.read_text()) if progress.is_file()
             else {"identity": identity, "done": 0, "counts": {}, "correct_per_question": []})
    artefacts.refuse_changes(f"the interrupted sampling {partial}", state["identity"], identity,
                             f"Delete it and {progress} to start again.")
    if state["done"] == 0:
        partial.unlink(missing_ok=True)
    counts = Counter(state["counts"])
    starts = range(state["done"], len(rows), pairs.chunk_questions)
    prompts = {start: [format_prompt(job.data.template, r[q_field], None, tokenizer)
                       for r in rows[start : start + pairs.chunk_questions]]
               for start in starts}
    sampled = {}
    if pairs.backend == "vllm":  # one engine for every chunk left; each chunk keeps its own seed, so a resumed run matches
        batches = [{"prompts": prompts[start], "n": pairs.samples, "temperature": pairs.temperature,
                    "top_p": pairs.top_p, "seed": pairs.seed + start, "max_tokens": pairs.max_new_tokens, "stop": stop,
                    "stop_token_ids": stop_ids}
                   for start in starts]
        _, outputs = vllm_worker.sample(path, engine, job.model.trust_remote_code, batches)
        sampled = {start: [c["text"] for per_prompt in out for c in per_prompt] for start, out in zip(starts, outputs)}
    for start in tqdm(starts, desc="sampling pairs", unit="chunk", initial=state["done"] // pairs.chunk_questions,
                      total=-(-len(rows) // pairs.chunk_questions)):
        chunk = rows[start : start + pairs.chunk_questions]
        if start in sampled:
            texts = sampled[start]
        else:
            torch.manual_seed(pairs.seed + start)  # this chunk's samples do not depend on earlier chunks
            texts = [c.text for c in generate(model, tokenizer, [q for q in prompts[start] for _ in range(pairs.samples)],
                                              pairs.max_new_tokens, pairs.batch_size, stop, stop_ids, progress=False,
                                              temperature=pairs.temperature, top_p=pairs.top_p)]
        new_rows = grade_and_pair(pairs, chunk, texts, (q_field, a_field), start, counts, state["correct_per_question"],
                                  job.model.name)
        with open(partial, "a") as f:
            f.write("".join(json.dumps(row) + "\n" for row in new_rows))
        counts["pairs"] += len(new_rows)
        state.update(done=start + len(chunk), counts=dict(counts))
        progress.write_text(json.dumps(state))
    summary = {**summary_of(pairs, len(rows), counts, state["correct_per_question"]),
               "model": job.model.name, "weights": weights, "settings": key["config"]}
    rows_out = [json.loads(l) for l in partial.read_text().splitlines()]
    write_jsonl(out, rows_out, summary)  # the summary goes to <out>.meta.json
    artefacts.commit(out, key)
    partial.unlink()
    progress.unlink()
    shown = {k: v for k, v in summary.items() if k != "correct_per_question"}
    log.info(f"wrote {len(rows_out)} pairs to {out}\n{json.dumps(shown, indent=2)}")
    return out


def pairs_for_training(job: PairsJob, overrides: list[str] | None = None) -> Path:
    """:func:`make_pairs`, refusing a result that training cannot use: a file with no pairs (every
    sample of every question right, or every one wrong), with the counts and what to change."""
    out = make_pairs(job, overrides)
    meta = json.loads(out.with_name(out.name + ".meta.json").read_text())
    if not meta["pairs"]:
        raise DataError(f"{out}: no pairs from {meta['questions']} questions x {meta['samples_per_question']} samples "
                        f"(sampled accuracy {meta['sampled_accuracy']:.3f}, skipped {meta['skipped']}): sample more "
                        "(pairs.num_questions, pairs.samples) or more diversely (pairs.temperature), then delete the file")
    return out


def main(argv: list[str]) -> None:
    def run() -> Path:
        cfg = compose_config(argv)  # the one place that sees the whole config: the job gets the groups it reads
        job = PairsJob(pairs=cfg.pairs, model=cfg.model, data=cfg.data, vllm=cfg.vllm, synthetic=cfg.synthetic, hub=cfg.hub,
                       cache_dir=cfg.cache_dir, model_tag=cfg.model_tag)
        return pairs_for_training(job, argv)

    run_cli(run)

