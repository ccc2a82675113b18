"""``python -m yfpo.reproduce experiments/SPEC.yaml ... [--dry-run]``: every command behind the
papers' tables, in order, then run (or, with ``--dry-run``, only printed).

A table spec (see :mod:`yfpo.pipelines.tables`) names the experiments that make its rows
(``experiments:``, trained in that order) and the evaluation sets (``evals:``). The commands:

1. neurons: ``python -m yfpo.neurons +experiment=X``, once per neuron file the runs need;
2. training: ``python -m yfpo.train -m +experiment=X`` (the experiment holds its own sweep);
3. evaluation: ``python -m yfpo.evaluate -m run_dir=multirun/X eval=A,B``;
4. tables: ``python -m yfpo.tables SPEC``.

``--seeds 1,2,3,4,5`` sets the training seeds of every row (default: the experiments' 1,2,3;
the tables aggregate whatever seeds each row has). ``--train-args``/``--eval-args`` are
appended to the training/evaluation commands, e.g. ``hydra/launcher=slurm trainer=ddp`` or
``eval.backend=vllm``. ``--train-args-file FILE`` adds overrides to named experiments only: a YAML
mapping from experiment to its overrides, e.g. ``fdt_sft: [trainer=fsdp, trainer.devices=2]`` for the
3B models that need several GPUs (``experiments/train_args/multi_gpu.yaml``). Every command's config — each job of each sweep — is composed before
anything runs, so a typo fails in seconds, not after a day of training. Every stage skips
finished work: running again continues where it stopped.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import shlex
import subprocess
import sys
from pathlib import Path

import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import ConfigCompositionException
from omegaconf import DictConfig

from yfpo.core.config import CONF_DIR, composition_error
from yfpo.core.errors import ConfigError, MissingError, run_cli
from yfpo.core.schema import role


def _compose(config_name: str, overrides: list[str]) -> DictConfig:
    try:
        if GlobalHydra.instance().is_initialized():  # inside main(): one initialisation for all jobs
            return compose(config_name, overrides=overrides, return_hydra_config=True)
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            return compose(config_name, overrides=overrides, return_hydra_config=True)
    except ConfigCompositionException as e:
        raise composition_error(e) from e


def sweep_jobs(config_name: str, overrides: list[str]) -> list[DictConfig]:
    """The composed config of every job ``python -m ... -m <overrides>`` would run: Hydra's own
    override parser expands the sweeps (``a=1,2``, ``choice(...)``, ``range(...)``; a list value
    ``a=[1,2]`` stays one value), from the command and from ``hydra.sweeper.params``, as its basic
    sweeper does: the cartesian product, the command line replacing a swept key it sets."""
    return [job for _, job in _sweep_jobs(config_name, tuple(overrides))]


def sweep_overrides(config_name: str, overrides: list[str]) -> list[tuple[list[str], DictConfig]]:
    """:func:`sweep_jobs` with each job's own overrides: the fixed ones and one value per swept key."""
    return list(_sweep_jobs(config_name, tuple(overrides)))


@functools.lru_cache(maxsize=None)  # plan() and check() ask for the same training sweeps
def _sweep_jobs(config_name: str, overrides: tuple[str, ...]) -> list[tuple[list[str], DictConfig]]:
    parser = OverridesParser.create()
    command = parser.parse_overrides(list(overrides))
    base = _compose(config_name, [o.input_line for o in command if not o.is_sweep_override()])
    params = base.hydra.sweeper.get("params") or {}
    axes: dict[str, list[str]] = {}
    for o in parser.parse_overrides([f"{k}={v}" for k, v in params.items()]) + command:
        if o.is_sweep_override():
            axes[o.get_key_element()] = list(o.sweep_string_iterator())
        elif o.get_key_element() in axes:
            axes[o.get_key_element()] = [o.get_value_element_as_str()]
    fixed = [o.input_line for o in command if o.get_key_element() not in axes]
    jobs = [fixed + [f"{k}={v}" for k, v in zip(axes, values)] for values in itertools.product(*axes.values())]
    return [(job, _compose(config_name, job)) for job in jobs]


def is_hydras(override: str) -> bool:
    """An override of Hydra's own settings (the launcher, ...): the training command's, not a neuron command's."""
    return override.startswith(("hydra.", "hydra/"))


def read_train_args_file(path: Path) -> dict[str, list[str]]:
    """Per-experiment training overrides from a YAML mapping ``experiment: [override, ...]`` (or one
    string of space-separated overrides)."""
    if not path.is_file():
        raise MissingError(f"--train-args-file {path}: no such file")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"--train-args-file {path}: not valid YAML ({e})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"--train-args-file {path}: give a mapping from experiment to overrides, "
                          "e.g. `fdt_sft: [trainer=fsdp, trainer.devices=2]`")
    out = {}
    for name, value in data.items():
        if isinstance(value, str):
            value = shlex.split(value)
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"--train-args-file {path}: `{name}` must list overrides as strings, got {value!r}")
        out[str(name)] = value
    return out


def plan(specs: list[Path], train_args: list[str], eval_args: list[str], seeds: str | None = None,
         per_experiment: dict[str, list[str]] | None = None) -> list[tuple[str, list[str]]]:
    """``(module, arguments)`` of every command, in order, for the table specs. ``seeds`` (``1,2,3,4,5``)
    replaces the training seeds of the experiments that sweep seeds (not of a start model's, such
    as fdt_sft, which every seed starts from). ``per_experiment``: experiment -> overrides appended
    after ``train_args`` to that experiment's commands only."""
    experiments, evals = [], {}
    for spec_path in specs:
        spec = yaml.safe_load(spec_path.read_text())
        if not spec.get("experiments"):
            raise ConfigError(f"{spec_path}: no `experiments:` list (the conf/experiment/* behind its rows)")
        experiments += [e for e in spec["experiments"] if e not in experiments]
        for e in spec["experiments"]:
            evals.setdefault(e, [])
            wanted = [*spec.get("evals", [spec.get("task")]), *(spec.get("dev") or {}).values()]
            evals[e] = list(dict.fromkeys([*evals[e], *wanted]))
    per_experiment = per_experiment or {}
    unknown = sorted(set(per_experiment) - set(experiments))
    if unknown:
        raise ConfigError(f"--train-args-file names {unknown}, which no table spec trains; "
                          f"the experiments are {experiments}")
    neurons, train, evaluate = [], [], []
    seen_neuron_files = set()
    parse = OverridesParser.create().parse_override
    for e in experiments:
        base = sweep_jobs("config", [f"+experiment={e}"])[0]
        args = [*train_args, *per_experiment.get(e, [])]
        if seeds and "seed" in (base.hydra.sweeper.params or {}):
            args.append(f"seed={seeds}")
        fixed = [f"+experiment={e}", *(a for a in args if not is_hydras(a) and not parse(a).is_sweep_override())]
        for overrides, job in sweep_overrides("config", [f"+experiment={e}", *args]):
            use = role(job.method)
            # a file a run needs is made; one only tracked is made unless it is a random set
            wanted = use == "rewarded" or (use == "tracked" and job.neurons.selector != "random")
            if wanted and job.neurons.path not in seen_neuron_files:
                seen_neuron_files.add(job.neurons.path)
                # the command that makes the file this job reads: the fixed overrides where they key it
                # alone, else also the job's swept values (a swept model, say)
                made = fixed if _compose("config", fixed).neurons.path == job.neurons.path else [
                    o for o in overrides if not is_hydras(o)]
                neurons.append(("yfpo.neurons", made))
        train.append(("yfpo.train", ["-m", f"+experiment={e}", *args]))
        name = sweep_jobs("config", [f"+experiment={e}", *args])[0].name
        evaluate.append(("yfpo.evaluate", ["-m", f"run_dir=multirun/{name}", f"eval={','.join(evals[e])}", *eval_args]))
    tables = [("yfpo.tables", [str(s) for s in specs])]
    return neurons + train + evaluate + tables


def check(commands: list[tuple[str, list[str]]]) -> int:
    """Compose the config of every job of every command and check its values as the stage itself
    will, before anything loads; returns the number of jobs."""
    from yfpo.evaluate.run import check_eval_config
    from yfpo.train.fit import check_training_config

    count = 0
    for module, args in commands:
        if module == "yfpo.tables":
            continue
        config_name = "evaluate" if module == "yfpo.evaluate" else "config"
        # a neuron command is one job: it is no Hydra sweep, whatever its experiment sweeps for training
        jobs = [_compose(config_name, args)] if module == "yfpo.neurons" else sweep_jobs(config_name, [a for a in args if a != "-m"])
        for job in jobs:
            if module == "yfpo.train":
                check_training_config(job, warn=False)
            elif module == "yfpo.evaluate":
                check_eval_config(job.eval)
            count += 1
    return count


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m yfpo.reproduce", description=__doc__.split("\n\n")[0])
    parser.add_argument("specs", nargs="+", type=Path, help="table specs, e.g. experiments/yfpo_table1.yaml")
    parser.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    parser.add_argument("--train-args", default="", help="appended to every training command")
    parser.add_argument("--eval-args", default="", help="appended to every evaluation command")
    parser.add_argument("--train-args-file", type=Path,
                        help="YAML: experiment -> overrides for its commands only, e.g. fdt_sft: [trainer=fsdp, trainer.devices=2]")
    parser.add_argument("--seeds", help="training seeds of every row, e.g. 1,2,3,4,5 (default: the experiments' own, 1,2,3)")
    args = parser.parse_args(argv)
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        per_experiment = run_cli(read_train_args_file, args.train_args_file) if args.train_args_file else None
        commands = run_cli(plan, args.specs, shlex.split(args.train_args), shlex.split(args.eval_args), args.seeds,
                           per_experiment)
        jobs = run_cli(check, commands)
    print(f"# {len(commands)} commands ({jobs} jobs, every config composed)", flush=True)
    for module, cmd_args in commands:
        if module == "yfpo.train":
            sweep = sweep_jobs("config", [a for a in cmd_args if a != "-m"])
            seeds = sorted({j.seed for j in sweep})
            print(f"# {sweep[0].name}: {len(sweep)} jobs, training seeds {', '.join(map(str, seeds))}", flush=True)
        line = shlex.join(["python", "-m", module, *cmd_args])
        print(line, flush=True)
        if not args.dry_run:
            subprocess.run([sys.executable, "-m", module, *cmd_args], check=True)

