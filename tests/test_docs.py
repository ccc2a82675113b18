"""The docs stay honest: every ``python -m yfpo...`` and ``make ...`` command written in
README.md or docs/*.md (fenced blocks and inline code) composes, so a renamed key, group, target or
flag breaks this test rather than a reader.

- ``make X ...`` runs as ``make -n X ...`` (exit status 0), and every ``python -m yfpo...`` line
  it would run is checked in turn (``make demo ARGS="..."`` checks the demo's overrides).
- Hydra commands are composed in-process, as ``--cfg job`` would (a subprocess per command costs
  seconds of imports): ``python -m yfpo.train`` and ``python -m yfpo.evaluate`` with the stages'
  own value checks; a ``-m`` sweep is expanded with Hydra's override parser (the command and the
  config's ``hydra.sweeper.params``): every option of a swept group, and the first and last value
  of any other swept key, is checked in some job. The other Hydra-configured stages
  (``yfpo.neurons``, ``yfpo.neurons.ablate``, ``yfpo.pairs``, ``yfpo.prepare``) compose as
  ``yfpo.core.config.compose_config`` does; ``yfpo.demo`` with ``+experiment=demo`` and its sweep.
  ``python -m yfpo.evaluate`` first quotes sweep directories as the entry point does
  (:func:`yfpo.core.config.quote_paths`), in a directory where its ``run_dir`` exists.
- ``python -m yfpo.tables`` and ``python -m yfpo.reproduce`` parse their arguments with their own
  argparse parser; the spec files must exist (or be made by a run, under ``multirun/``), and
  reproduce's ``--train-args``/``--eval-args``/``--seeds`` compose with the first experiment of its
  first spec (the whole 109-job dry run is tests/test_recipes.py's). ``python -m yfpo.dashboard``
  parses its arguments with its own parser too (nothing is saved).

Shell variables assigned in a fenced block (``SLURM="..."``) are expanded in its later lines.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import functools
import importlib.util
import io
import os
import re
import shlex
import subprocess
from pathlib import Path
from unittest import mock

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
CONF = ROOT / "conf"
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
VARIABLE = re.compile(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?")
FENCE = re.compile(r"^ {0,3}```.*?^ {0,3}```[^\n]*$", re.S | re.M)
INLINE = re.compile(r"(?<!`)`([^`]+)`(?!`)")
LINK = re.compile(r"\]\(([^)\s]+)\)")
PLACEHOLDER = re.compile(r"^\.\.\.$|=\.\.\.$|…|<[^>]*>")  # `...`, `run_dir=...`, `<file>`
MAKE_ENV = {"MAKEFLAGS", "MFLAGS", "MAKELEVEL", "ARGS", "TRAIN_ARGS", "TRAIN_ARGS_FILE", "EVAL_ARGS", "SEEDS", "DRY_RUN"}
PYTHONS = {"python", "python3", ".venv/bin/python"}
# Commands in the docs that are deliberately not checked, as (file, command); keep this short.
SKIP: set[tuple[str, str]] = set()


def segments(text: str, variables: dict[str, str]) -> list[list[str]]:
    """The simple commands of one shell line (split at ``;``, ``&&``, ``|``), with the block's
    variables expanded, a ``# comment`` dropped, and leading ``VAR=value`` and ``time`` removed.
    A segment of assignments alone (``export A=1 B=2``) records them in ``variables``."""
    text = VARIABLE.sub(lambda m: variables.get(m.group(1), m.group(0)), text)
    lex = shlex.shlex(text, posix=True, punctuation_chars=";&|")
    lex.whitespace_split, lex.commenters = True, "#"
    try:
        tokens = list(lex)
    except ValueError:  # unbalanced quotes: prose, not a command
        return []
    out, current = [], []
    for token in [*tokens, ";"]:
        if token and set(token) <= set(";&|"):
            words = current[1:] if current[:1] == ["export"] else current
            if words and all(ASSIGNMENT.match(w) for w in words):
                variables.update(w.split("=", 1) for w in words)
            while current and (ASSIGNMENT.match(current[0]) or current[0] == "time"):
                current = current[1:]
            if current:
                out.append(current)
            current = []
        else:
            current.append(token)
    return out


def is_command(words: list[str]) -> bool:
    return (words[0] == "make" and len(words) > 1) or (
        words[0] in PYTHONS and len(words) > 2 and words[1] == "-m" and words[2].startswith("yfpo"))


def extract(path: Path) -> list[tuple[str, int, list[str]]]:
    """``(file, line, words)`` of every documented command in ``path``."""
    text, found = path.read_text(), []
    name = path.relative_to(ROOT).as_posix()
    for block in FENCE.finditer(text):
        variables: dict[str, str] = {}
        first = text.count("\n", 0, block.start()) + 1
        lines = block.group(0).split("\n")[1:-1]
        i = 0
        while i < len(lines):
            start, line = i, lines[i]
            while line.endswith("\\") and i + 1 < len(lines):  # continuation lines
                i += 1
                line = line[:-1] + " " + lines[i]
            found += [(name, first + 1 + start, w) for w in segments(line, variables) if is_command(w)]
            i += 1
    prose = FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), text)
    for span in INLINE.finditer(prose):
        line = prose.count("\n", 0, span.start()) + 1
        found += [(name, line, w) for w in segments(span.group(1).replace("\n", " "), {}) if is_command(w)]
    return [c for c in found if (c[0], shlex.join(c[2])) not in SKIP]


COMMANDS = [c for path in DOCS for c in extract(path)]


def ids(commands):
    seen: dict[str, int] = {}
    for name, line, _ in commands:
        key = f"{name}:{line}"
        seen[key] = seen.get(key, 0) + 1
        yield key if seen[key] == 1 else f"{key}#{seen[key]}"


# --- the checker -------------------------------------------------------------------------------

def is_group(key: str) -> bool:
    """A config group (``+variant``, ``eval``, ``hydra/launcher``) or an added key: its value needs
    Hydra's composition; any other key is a value set on the composed config."""
    return key[:1] in "+~" or "@" in key or (CONF / key).is_dir()


def sweep_values(override) -> list[tuple[str, object]]:
    """``(as typed, as parsed)`` of the values of one swept key that are composed: every option
    of a config group (each is a file of its own), the first and last value of any other key."""
    values = list(zip(override.sweep_string_iterator(), override.sweep_iterator()))
    return values if is_group(override.get_key_element()) else [values[0], values[-1]]


@functools.lru_cache(maxsize=None)
def composed(config_name: str, overrides: tuple[str, ...]):
    """The config ``python -m <app> <overrides> --cfg job`` would print (hydra node included), composed
    once per distinct command line: the docs repeat many (callers copy before changing it)."""
    from hydra import compose

    return compose(config_name, overrides=list(overrides), return_hydra_config=True)


@functools.lru_cache(maxsize=None)
def compose_jobs(config_name: str, overrides: tuple[str, ...], multirun: bool) -> int:
    """Compose ``python -m <app> [-m] <overrides>`` and run the stage's value checks; returns the
    number of jobs checked. Without ``-m``, Hydra itself refuses a swept value. With it, the sweep
    is the command's and ``hydra.sweeper.params``'s (the command line replacing a key it sets),
    as Hydra's basic sweeper runs it, and job i takes value i of every axis, so each value is
    checked in some job. A job whose swept keys are all plain values is the composed base with
    those values set (struct mode and the typed schemas refuse what Hydra would), which saves a
    composition per job."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    from yfpo.evaluate.run import check_eval_config
    from yfpo.train.fit import check_training_config

    check = {"config": lambda cfg: check_training_config(cfg, warn=False),
             "evaluate": lambda cfg: check_eval_config(cfg.eval)}[config_name]
    parser = OverridesParser.create()
    command = parser.parse_overrides(list(overrides))
    fixed = [o.input_line for o in command if not o.is_sweep_override()]
    base = composed(config_name, tuple(fixed) if multirun else overrides)
    jobs = [base]
    if multirun:
        on_line = {o.get_key_element() for o in command}
        swept_in_config = base.hydra.sweeper.get("params") or {}
        params = [o for o in parser.parse_overrides([f"{k}={v}" for k, v in swept_in_config.items()])
                  if o.get_key_element() not in on_line]
        sweeps = [o for o in [*params, *command] if o.is_sweep_override()]
        single = [o for o in params if not o.is_sweep_override()]
        axes = {o.get_key_element(): sweep_values(o) for o in sweeps}
        width = max(map(len, axes.values()), default=1)
        jobs = []
        for i in range(width):
            values = {k: v[min(i, len(v) - 1)] for k, v in axes.items()}
            if any(is_group(o.get_key_element()) for o in [*sweeps, *single]):
                jobs.append(composed(config_name, (*fixed, *(o.input_line for o in single),
                                                   *(f"{k}={typed}" for k, (typed, _) in values.items()))))
                continue
            job = copy.deepcopy(base)
            settings = [*((o.get_key_element(), o.value()) for o in single), *((k, v) for k, (_, v) in values.items())]
            for key, value in settings:
                OmegaConf.update(job, key, value, merge=False)
            jobs.append(job)
    for job in jobs:
        check(job)
    return len(jobs)


class _Parsed(Exception):
    pass


def parse_with_own_parser(main, argv: list[str]) -> argparse.Namespace:
    """The namespace ``main(argv)``'s argparse parser makes of ``argv``, without running ``main``
    further; a flag it does not define exits (SystemExit 2)."""
    parse = argparse.ArgumentParser.parse_args

    def stop(self, args=None, namespace=None):
        raise _Parsed(parse(self, args, namespace))

    with mock.patch.object(argparse.ArgumentParser, "parse_args", stop):
        try:
            main(argv)
        except _Parsed as parsed:
            return parsed.args[0]
    raise AssertionError(f"{main.__module__}.main parsed no arguments")


def check_spec(path: Path) -> dict:
    if not path.exists():  # a spec a run writes (the demo's multirun/demo/demo_spec.yaml)
        assert path.parts[0] == "multirun", f"{path}: no such table spec"
        return {}
    return yaml.safe_load(path.read_text())


def check_python(module: str, args: list[str], tmp: Path) -> None:
    assert importlib.util.find_spec(module) is not None, f"no module {module}"
    multirun = "-m" in args or "--multirun" in args
    overrides = tuple(a for a in args if a not in ("-m", "--multirun"))
    if module == "yfpo.train":
        compose_jobs("config", overrides, multirun)
    elif module == "yfpo.evaluate":
        from yfpo.core.config import quote_paths

        for a in overrides:  # the run directory the command is given exists once the run did
            if a.startswith("run_dir="):
                (tmp / a.removeprefix("run_dir=")).mkdir(parents=True, exist_ok=True)
        with contextlib.chdir(tmp):
            quoted = quote_paths(list(overrides))
        compose_jobs("evaluate", tuple(quoted), multirun)
    elif module in ("yfpo.neurons", "yfpo.neurons.ablate", "yfpo.pairs", "yfpo.prepare"):
        assert not multirun, f"python -m {module} is not a Hydra app: no -m"
        composed("config", overrides)  # as yfpo.core.config.compose_config composes it
    elif module == "yfpo.demo":
        base = ("+experiment=demo", *overrides)
        demo = composed("config", base).demo
        arms, seeds = ",".join(demo.variants), ",".join(map(str, demo.seeds))
        compose_jobs("config", (*base, f"+variant={arms}", f"seed={seeds}"), True)  # its training sweep
    elif module == "yfpo.tables":
        from yfpo.pipelines.tables import main

        for spec in parse_with_own_parser(main, list(args)).specs:
            check_spec(spec)
    elif module == "yfpo.reproduce":
        from yfpo.pipelines.reproduce import main

        ns = parse_with_own_parser(main, list(args))
        specs = [check_spec(s) for s in ns.specs]
        experiment, evals = specs[0]["experiments"][0], specs[0]["evals"]
        seeds = [f"seed={ns.seeds}"] if ns.seeds else []
        check_python("yfpo.train", ["-m", f"+experiment={experiment}", *seeds, *shlex.split(ns.train_args)], tmp)
        check_python("yfpo.evaluate", ["-m", f"run_dir=multirun/{experiment}", f"eval={','.join(evals)}",
                                       *shlex.split(ns.eval_args)], tmp)
        if ns.train_args_file:  # each experiment it names, with its own overrides
            from yfpo.pipelines.reproduce import read_train_args_file

            for name, extra in read_train_args_file(ns.train_args_file).items():
                check_python("yfpo.train", ["-m", f"+experiment={name}", *seeds, *shlex.split(ns.train_args), *extra], tmp)
    elif module == "yfpo.dashboard":  # its own argparse parser (ENTITY/PROJECT); saving is never tried
        from yfpo.pipelines.dashboard import main

        parse_with_own_parser(main, list(args))
    else:
        raise AssertionError(f"no checker for python -m {module}: add one to tests/test_docs.py")


def check_make(args: list[str], tmp: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in MAKE_ENV}  # only what the command line sets
    done = subprocess.run(["make", "-n", *args], cwd=ROOT, env=env, capture_output=True, text=True)
    assert done.returncode == 0, f"make -n {shlex.join(args)}:\n{done.stderr}"
    for line in done.stdout.splitlines():
        words = shlex.split(line)
        if len(words) > 2 and words[0].endswith("python") and words[1] == "-m" and words[2].startswith("yfpo"):
            check_python(words[2], words[3:], tmp)


def check(words: list[str], tmp: Path) -> None:
    if words[0] == "make":
        check_make(words[1:], tmp)
    else:
        check_python(words[2], words[3:], tmp)


# --- the tests ---------------------------------------------------------------------------------

@pytest.fixture(scope="module", autouse=True)
def hydra_conf():
    """One Hydra initialisation for the module: every composition reuses it, which halves the
    cost of each."""
    from hydra import initialize_config_dir

    from yfpo.core.config import CONF_DIR

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        yield


@pytest.fixture(scope="module")
def run_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("after_the_runs")


def test_the_extractor_finds_the_commands():
    assert len(COMMANDS) >= 20, f"only {len(COMMANDS)} commands found in {[p.name for p in DOCS]}"
    found = {shlex.join(w) for _, _, w in COMMANDS}
    assert {"make demo", "make test"} <= found
    assert any(w[:3] == ["python", "-m", "yfpo.train"] and "-m" in w[3:] for _, _, w in COMMANDS)


@pytest.mark.parametrize("name,line,words", COMMANDS, ids=list(ids(COMMANDS)))
def test_documented_command_composes(name, line, words, run_root):
    placeholders = [w for w in words if PLACEHOLDER.search(w)]
    assert not placeholders, f"{name}:{line}: a placeholder in `{shlex.join(words)}`: write a real value"
    check(words, run_root)


@pytest.mark.parametrize("command,expected", [
    ("python -m yfpo.train method.nll_wieght=1", "method.nll_wieght"),        # a misspelt key
    ("python -m yfpo.neurons neurons=attnlrpp", "neurons/attnlrpp"),           # an unknown option of a group
    ("python -m yfpo.train method=dpo lambda=0.5", "lambda=0.5"),             # a value the stage refuses
    ("python -m yfpo.train lambda=0.1,0.2 method=yfpo", "lambda=0.1,0.2"),    # a sweep without -m
    ("python -m yfpo.train -m +experiment=demo +variant=dpo,nosuch", "variant/nosuch"),  # a swept option
    ("python -m yfpo.train -m +experiment=yfpo_2k lambda=0.1,abc", "Value 'abc'"),      # a swept value
    ("python -m yfpo.evaluate run_dir=runs/x eval.backend=vlm", "eval.backend=vlm"),
    ("python -m yfpo.tables experiments/yfpo_table2.yaml --seed-for 0.01", "2"),         # argparse exits 2
    ("python -m yfpo.tables experiments/no_such_table.yaml", "no such table spec"),
    ("python -m yfpo.reproduce experiments/yfpo_table1.yaml --train-args optim.schedule=cosin", "optim.schedule"),
    ("python -m yfpo.nosuchstage x=1", "no module"),
    ("make no-such-target", "no-such-target"),
    ('make demo ARGS="optim.lr=3e-5 optim.lrr=1"', "optim.lrr"),              # through make -n's command
])
def test_a_broken_command_fails_the_checker(command, expected, run_root):
    with pytest.raises((Exception, SystemExit)) as failure, contextlib.redirect_stderr(io.StringIO()):
        check(segments(command, {})[0], run_root)
    assert expected in str(failure.value)


def anchors(path: Path) -> set[str]:
    """GitHub's ids of the headings of a Markdown file."""
    headings = re.findall(r"^#+ (.+)$", FENCE.sub("", path.read_text()), re.M)
    return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in headings}


@pytest.mark.parametrize("path", DOCS, ids=[p.relative_to(ROOT).as_posix() for p in DOCS])
def test_relative_links_resolve(path):
    """A link into the repository names a file that exists, and a heading of it that exists; a relative
    link never leaves the repository (a clone has nothing beside it)."""
    broken = []
    for target in LINK.findall(FENCE.sub("", path.read_text())):
        if re.match(r"[a-z]+:", target):
            continue
        file, _, anchor = target.partition("#")
        resolved = (path.parent / file).resolve() if file else path
        if ROOT not in resolved.parents and resolved != ROOT:
            broken.append(f"{target} (outside the repository)")
        elif not resolved.exists() or (anchor and resolved.suffix == ".md" and anchor not in anchors(resolved)):
            broken.append(target)
    assert not broken, f"{path.name}: broken links {broken}"


# A measured figure: a time, a memory or disk size, a throughput or a GPU-hour count.
FIGURE = re.compile(r"\b\d[\d.,]*\s?(?:s|min|h|ms|GB|GiB|MB|MiB|TB|tokens/s|GFLOP/s|GPU-hours|H100-hours)\b")
DATE = re.compile(r"\b20\d\d-\d\d-\d\d\b")
SOURCE = re.compile(r"`(?:time )?(?:make|python -m|\.venv/bin/python -m|pytest|CI=true)[^`]*`|\bestimat|\bcomputed\b", re.I)


def blocks(text: str) -> list[tuple[int, str]]:
    """(first line, text) of each paragraph, list or table of a Markdown page, code blocks left out;
    a table, or a block after a paragraph ending in ":", counts with the paragraph just above it (its caption)."""
    out, start, lines = [], 0, []
    for i, line in enumerate(FENCE.sub(lambda m: "\n" * m.group().count("\n"), text).splitlines() + [""]):
        if line.strip():
            start, lines = (i if not lines else start), [*lines, line]
        elif lines:
            out.append((start + 1, "\n".join(lines)))
            lines = []
    merged = []
    for first, block in out:  # a table, or anything after a line ending in ":", goes with the block above it
        led_in = merged and (merged[-1][1].rstrip().endswith(":") or block.lstrip().startswith("|"))
        if led_in and not merged[-1][1].lstrip().startswith("#"):
            merged[-1] = (merged[-1][0], merged[-1][1] + "\n" + block)
        else:
            merged.append((first, block))
    return merged


def bare_figures(text: str) -> list[str]:
    """The blocks of a page that state a FIGURE with no DATE and no SOURCE, as ``line N: ...``."""
    return [f"line {first}: {block.splitlines()[0][:80]}" for first, block in blocks(text)
            if FIGURE.search(block) and not DATE.search(block) and not SOURCE.search(block)]


def test_the_figure_check_catches_a_figure_without_its_source():
    page = ("# A page\n\nThe demo takes 12 min.\n\nIt took 11 min 48 s (`time make demo`).\n\n"
            "Measured on 2026-12-03:\n\n| step | s |\n| --- | --- |\n| SFT | 216 s |\n\n"
            "## Another part\n\n| bare table | 3.1 GB |\n| --- | --- |\n\n```\nin a code block: 9 s\n```\n\nAbout 5 GB (estimated).\n")
    assert bare_figures(page) == ["line 3: The demo takes 12 min.", "line 15: | bare table | 3.1 GB |"]


@pytest.mark.parametrize("path", DOCS, ids=[p.relative_to(ROOT).as_posix() for p in DOCS])
def test_every_figure_names_its_command_or_date(path):
    """Every paragraph, list or table (with its caption) of README and docs that states a measured
    figure (a time, a size, a throughput: FIGURE) also names the command that measured it or the date,
    or says it is an estimate or computed. A page-level check of where a number came from, not of the number."""
    bare = bare_figures(path.read_text())
    assert not bare, f"{path.name}: figures without a command or a date:\n" + "\n".join(bare)


def test_the_readmes_cpu_wheel_option_reaches_pip(tmp_path):
    """README: on stock PyPI Linux's torch wheel is the CUDA build, and `make install TORCH_INDEX=...`
    takes PyTorch's CPU wheel instead. Checked on a copy without a venv, so that make prints the install."""
    import shutil

    for name in ("Makefile", "pyproject.toml", "constraints.txt"):
        shutil.copy(ROOT / name, tmp_path / name)
    index = "https://download.pytorch.org/whl/cpu"
    assert f"TORCH_INDEX={index}" in (ROOT / "README.md").read_text()
    with_index = subprocess.run(["make", "-n", "install", f"TORCH_INDEX={index}"], cwd=tmp_path, capture_output=True, text=True)
    without = subprocess.run(["make", "-n", "install"], cwd=tmp_path, capture_output=True, text=True)
    pip = [l for l in with_index.stdout.splitlines() if "pip install -q -c constraints.txt" in l]
    assert len(pip) == 2 and all(f"--extra-index-url {index} " in line for line in pip), with_index.stdout  # core, then vLLM
    assert "--extra-index-url" not in without.stdout and "torch==2.13.0" in (ROOT / "constraints.txt").read_text()


def test_the_version_is_the_same_in_pyproject_citation_and_changelog():
    """The package's version is the newest released CHANGELOG heading and CITATION.cff's."""
    version = re.search(r'^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.M).group(1)
    released = re.findall(r"^## \[(\d+\.\d+\.\d+)\] - \d{4}-\d\d-\d\d$", (ROOT / "CHANGELOG.md").read_text(), re.M)
    cited = yaml.safe_load((ROOT / "CITATION.cff").read_text())["version"]
    assert released and version == released[0] == str(cited), (version, released[:1], cited)
    assert (ROOT / "LICENSE").read_text().startswith("MIT License") and 'license = { text = "MIT" }' in (ROOT / "pyproject.toml").read_text()
