"""Layering (DESIGN.md section 2, style guideline G1): ``schemas`` <- ``dpmesh_core`` <- ``pipelines`` <- ``infra``.

Walks the AST of every ``.py`` file, so imports inside functions and ``importlib.import_module("x")``
with a literal name count too. Also checks, in fresh interpreters, that the CPU-only entry points
do not pull in torch.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest


REPO_ROOT = Path(__file__).resolve().parents[2]
LAYERS = ("schemas", "dpmesh_core", "pipelines", "infra")

ALLOWED_THIRD_PARTY: dict[str, frozenset[str]] = {"schemas": frozenset({"pyarrow", "numpy"})}
"""Layers restricted to the standard library plus these top-level packages (and themselves)."""

FORBIDDEN: dict[str, frozenset[str]] = {
    "dpmesh_core": frozenset({"apache_beam", "hydra", "omegaconf", "pipelines", "infra"}),
    "pipelines": frozenset({"infra"}),
}
"""Top-level packages a layer must never import."""


def _python_files(layer: str) -> list[Path]:
    return sorted((REPO_ROOT / layer).rglob("*.py"))


def _imported_modules(path: Path) -> Iterator[tuple[int, str]]:
    """Yield ``(line, absolute top-level module)`` for every import in ``path``; relative imports are skipped."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0 and node.module:
                yield node.lineno, node.module.split(".")[0]
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func, name = node.func, node.args[0].value
            dynamic = (isinstance(func, ast.Name) and func.id in {"__import__", "import_module"}) or (
                isinstance(func, ast.Attribute) and func.attr == "import_module"
            )
            if dynamic and isinstance(name, str) and not name.startswith("."):
                yield node.lineno, name.split(".")[0]


def _violation(layer: str, module: str) -> str | None:
    if module in FORBIDDEN.get(layer, frozenset()):
        return f"{layer} must not import {module}"
    allowed = ALLOWED_THIRD_PARTY.get(layer)
    if allowed is not None and module not in allowed and module != layer and module not in sys.stdlib_module_names:
        return f"{layer} may import only the standard library and {sorted(allowed)}, not {module}"
    return None


@pytest.mark.parametrize("layer", LAYERS)
def test_layer_imports(layer: str) -> None:
    violations = []
    for path in _python_files(layer):
        for line, module in _imported_modules(path):
            message = _violation(layer, module)
            if message:
                violations.append(f"{path.relative_to(REPO_ROOT)}:{line}: {message}")
    assert not violations, "layering violations (DESIGN.md section 2):\n" + "\n".join(violations)


def test_infra_is_not_a_package() -> None:
    inits = sorted(str(p.relative_to(REPO_ROOT)) for p in (REPO_ROOT / "infra").rglob("__init__.py"))
    assert not inits, f"infra/ must hold no importable package logic, found: {inits}"


def test_checker_sees_function_level_and_dynamic_imports(tmp_path: Path) -> None:
    source = tmp_path / "mod.py"
    source.write_text(
        "import os\nfrom . import sibling\n\ndef f():\n    import apache_beam.io\n"
        "    from hydra import main\n    importlib.import_module('torch.nn')\n",
        encoding="utf-8",
    )
    assert list(_imported_modules(source)) == [(1, "os"), (5, "apache_beam"), (6, "hydra"), (7, "torch")]
    assert _violation("dpmesh_core", "apache_beam")
    assert _violation("schemas", "torch")
    assert _violation("schemas", "json") is None
    assert _violation("pipelines", "torch") is None


# The finder prints the importing stack on stderr (so a failure names the culprit), then lets the import proceed.
_TORCH_PROBE = """
import sys, traceback
class _Probe:
    def find_spec(self, name, path=None, target=None):
        if name == "torch":
            traceback.print_stack()
        return None
sys.meta_path.insert(0, _Probe())
import {module}
assert "torch" not in sys.modules, "importing {module} imported torch"
"""


@pytest.mark.parametrize(
    ("module", "module_file"),
    [
        ("pipelines.shard.job", "pipelines/shard/job.py"),
        ("pipelines.refilter.job", "pipelines/refilter/job.py"),
        # The label job and its per-shard step reach the model only through the handler they are given, so
        # launch checks answer without torch and a test double's worker processes never load it.
        ("pipelines.label.job", "pipelines/label/job.py"),
        ("pipelines.label.label_shard", "pipelines/label/label_shard.py"),
        ("pipelines.eval.job", "pipelines/eval/job.py"),
        ("pipelines.export.job", "pipelines/export/job.py"),
        ("pipelines.report.job", "pipelines/report/job.py"),
        ("dpmesh_core", "dpmesh_core/__init__.py"),
        ("schemas", "schemas/__init__.py"),
    ],
)
def test_cpu_entry_points_do_not_import_torch(module: str, module_file: str) -> None:
    if not (REPO_ROOT / module_file).exists():
        pytest.skip(f"{module} not written yet")
    result = subprocess.run(
        [sys.executable, "-c", _TORCH_PROBE.format(module=module)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, f"`import {module}` must not import torch:\n{result.stderr}"


@pytest.mark.parametrize(
    ("job", "other"),
    [
        ("shard", "label"),
        ("label", "shard"),
        ("export", "label"),
        ("export", "shard"),
        ("label", "export"),
        ("refilter", "label"),
        ("label", "refilter"),
        ("refilter", "shard"),
        ("refilter", "export"),
    ],
)
def test_jobs_do_not_import_each_other(job: str, other: str) -> None:
    """DESIGN.md section 2: jobs (shard, label, export) share only ``common/``, ``dpmesh_core`` and ``schemas``."""
    forbidden = f"pipelines.{other}"
    violations = []
    for path in sorted((REPO_ROOT / "pipelines" / job).rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            if any(n == forbidden or n.startswith(forbidden + ".") for n in names):
                violations.append(f"{path.relative_to(REPO_ROOT)}:{node.lineno}")
    assert not violations, f"pipelines.{job} must not import {forbidden}: " + ", ".join(violations)
