"""The package's floors (docs/architecture.md): every import inside ``yfpo/`` points down the order
below or stays in its own package, so the packages form no cycle and ``core`` imports no other.
Entry points (``yfpo/<name>.py``, ``__main__.py``) sit on top and may import anything."""

import ast
import re
from pathlib import Path

from tests.conftest import ROOT

# Lowest first. A package may import its own modules and the packages before it.
ORDER = ("core", "data", "assets", "neurons", "train", "evaluate", "pairs", "pipelines")


def is_entry_point(path: Path) -> bool:
    rel = path.relative_to(ROOT / "yfpo")
    return len(rel.parts) == 1 or rel.name == "__main__.py"


def upward_imports(sources: dict[Path, str]) -> list[str]:
    """``file:line: imports X (package a may import only ...)`` for each import against :data:`ORDER`."""
    wrong = []
    for path, text in sorted(sources.items()):
        if is_entry_point(path):
            continue
        own = path.relative_to(ROOT / "yfpo").parts[0]
        for node in ast.walk(ast.parse(text, filename=str(path))):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            for name in names:
                parts = name.split(".")
                if parts[0] != "yfpo" or len(parts) < 2 or parts[1] == own:
                    continue
                if parts[1] not in ORDER or ORDER.index(parts[1]) > ORDER.index(own):
                    allowed = ", ".join(ORDER[: ORDER.index(own)]) or "none"
                    wrong.append(f"{path.relative_to(ROOT)}:{node.lineno}: imports {name} "
                                 f"(yfpo.{own} may import only its own modules and: {allowed})")
    return wrong


def sources() -> dict[Path, str]:
    return {p: p.read_text() for p in (ROOT / "yfpo").rglob("*.py")}


def test_every_package_has_a_floor():
    packages = {p.parent.name for p in (ROOT / "yfpo").glob("*/__init__.py")}
    assert packages == set(ORDER), f"place each package of yfpo/ in ORDER (and docs/architecture.md): {packages ^ set(ORDER)}"


def test_imports_point_down_the_floors():
    wrong = upward_imports(sources())
    assert not wrong, "imports against docs/architecture.md's floors:\n" + "\n".join(wrong)


def test_the_check_names_an_upward_import():
    fake = {ROOT / "yfpo" / "core" / "x.py": "import torch\nfrom yfpo.core import errors\nfrom yfpo.train.losses import dpo_loss\n",
            ROOT / "yfpo" / "data" / "y.py": "def f():\n    import yfpo.pipelines.tables\n",
            ROOT / "yfpo" / "train" / "__main__.py": "from yfpo.pipelines import demo\n"}
    assert upward_imports(fake) == [
        "yfpo/core/x.py:3: imports yfpo.train.losses (yfpo.core may import only its own modules and: none)",
        "yfpo/data/y.py:2: imports yfpo.pipelines.tables (yfpo.data may import only its own modules and: core)"]


def test_the_architecture_page_states_the_same_order():
    page = (ROOT / "docs" / "architecture.md").read_text()
    stated = re.search(r"^Order, lowest first: (.+)\.$", page, re.M)
    assert stated, "docs/architecture.md: no line 'Order, lowest first: `core`, ...'"
    assert tuple(re.findall(r"`(\w+)`", stated.group(1))) == ORDER
