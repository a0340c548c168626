"""Architecture boundaries, enforced by an AST scan of the source (nothing is imported).

* ``feature_pipeline``, ``training_pipeline`` and ``inference_service`` never
  import each other nor ``fti`` (the CLI package).
* ``shared`` imports no service, no ``fti``, and no web framework or MLflow
  (``fastapi``, ``starlette``, ``uvicorn``, ``mlflow``, any submodule), so every
  image can install it.
* ``fti`` may import the services (lazily, inside its command functions).

Every import form counts: ``import a.b``, ``from a.b import c``, relative
imports (resolved against the file's own package), imports under
``if TYPE_CHECKING:`` or inside functions, and ``importlib.import_module("a")`` /
``__import__("a")`` with a literal name.
"""

from __future__ import annotations

import ast
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SERVICES = ("feature_pipeline", "training_pipeline", "inference_service", "monitoring_service")
SHARED_FORBIDDEN_THIRD_PARTY = ("fastapi", "starlette", "uvicorn", "mlflow")

RULES: dict[str, tuple[str, ...]] = {
    **{svc: tuple(s for s in SERVICES if s != svc) + ("fti",) for svc in SERVICES},
    "shared": SERVICES + ("fti",) + SHARED_FORBIDDEN_THIRD_PARTY,
}


@dataclass(frozen=True)
class Violation:
    file: str
    line: int
    module: str
    forbidden: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line} imports {self.module!r} (forbidden: {self.forbidden})"


def _module_parts(root: Path, path: Path) -> tuple[list[str], bool]:
    """Dotted parts of the module defined by ``path`` and whether it is a package ``__init__``."""
    rel = path.relative_to(root).with_suffix("")
    parts = list(rel.parts)
    is_pkg = parts[-1] == "__init__"
    if is_pkg:
        parts = parts[:-1]
    return parts, is_pkg


def _resolve_relative(node: ast.ImportFrom, parts: list[str], is_pkg: bool) -> list[str]:
    """Absolute names an ``ImportFrom`` refers to (the module and, for ``from X import y``, ``X.y``)."""
    if node.level == 0:
        base: list[str] = []
    else:
        package = parts if is_pkg else parts[:-1]
        up = node.level - 1
        # Going above the top-level package is an ImportError at runtime, but it is
        # still an attempt to reach another package: resolve what remains.
        base = package[: len(package) - up] if up <= len(package) else []
    mod = base + (node.module.split(".") if node.module else [])
    names: list[str] = []
    if mod:
        names.append(".".join(mod))
    for alias in node.names:
        if alias.name != "*":
            names.append(".".join([*mod, alias.name]))  # ``from . import x`` may name a module
    return names


def _imported_modules(tree: ast.AST, parts: list[str], is_pkg: bool) -> list[tuple[int, str]]:
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            found.extend((node.lineno, name) for name in _resolve_relative(node, parts, is_pkg))
        elif isinstance(node, ast.Call) and node.args:
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            arg = node.args[0]
            if name in ("import_module", "__import__") and isinstance(arg, ast.Constant) \
                    and isinstance(arg.value, str) and not arg.value.startswith("."):
                found.append((node.lineno, arg.value))
    return found


def _matches(module: str, forbidden: str) -> bool:
    return module == forbidden or module.startswith(forbidden + ".")


def find_violations(root: Path, package: str, forbidden: tuple[str, ...]) -> list[Violation]:
    """Every import in any ``.py`` file under ``root/package`` that reaches a ``forbidden`` top-level name."""
    pkg_dir = root / package
    files = sorted(pkg_dir.rglob("*.py"))
    if not files:
        raise AssertionError(f"no Python files under {pkg_dir}: the scan would prove nothing")
    out: list[Violation] = []
    for path in files:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        parts, is_pkg = _module_parts(root, path)
        for line, module in _imported_modules(tree, parts, is_pkg):
            for bad in forbidden:
                if _matches(module, bad):
                    out.append(Violation(str(path.relative_to(root)), line, module, bad))
    # ``from .. import x`` yields both ``..`` and ``..x``; report each (file, line, forbidden) once
    unique: dict[tuple[str, int, str], Violation] = {}
    for v in out:
        unique.setdefault((v.file, v.line, v.forbidden), v)
    return list(unique.values())


# --------------------------------------------------------------------------- the real tree


@pytest.mark.parametrize("package", sorted(RULES))
def test_package_respects_import_boundaries(package: str) -> None:
    violations = find_violations(REPO, package, RULES[package])
    assert not violations, "import boundary violated:\n" + "\n".join(map(str, violations))


def test_the_scan_covers_every_package_file() -> None:
    # Sanity: the scan sees nested modules (routes/, migrations/) and real imports.
    scanned = {str(p.relative_to(REPO)) for pkg in RULES for p in (REPO / pkg).rglob("*.py")}
    assert "inference_service/routes/predict.py" in scanned
    assert "shared/migrations/env.py" in scanned
    tree = ast.parse((REPO / "feature_pipeline" / "pipeline.py").read_text())
    mods = {m for _, m in _imported_modules(tree, ["feature_pipeline", "pipeline"], False)}
    assert "feature_pipeline.featureset" in mods and "feature_pipeline.extract" in mods


def test_cli_package_may_import_services_lazily() -> None:
    # ``fti`` is allowed to import the services, but only inside functions: importing
    # ``fti.cli`` must not drag in fastapi / mlflow for ``fti --help``.
    tree = ast.parse((REPO / "fti" / "cli.py").read_text(encoding="utf-8"))
    top_level = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    top_mods = {m for _, m in _imported_modules(ast.Module(body=top_level, type_ignores=[]), ["fti", "cli"], False)}
    assert not [m for m in top_mods if any(_matches(m, s) for s in SERVICES)]
    all_mods = {m for _, m in _imported_modules(tree, ["fti", "cli"], False)}
    assert any(_matches(m, s) for m in all_mods for s in SERVICES)  # it does use them, lazily


@pytest.mark.parametrize("package", ["shared", *SERVICES, "fti"])
def test_packages_resolve_inside_the_repo(package: str) -> None:
    # ``shared`` is a generic name: a stray ``shared`` on sys.path would silently shadow ours.
    spec = importlib.util.find_spec(package)
    assert spec is not None and spec.origin is not None
    assert Path(spec.origin).resolve().is_relative_to(REPO), f"{package} resolves to {spec.origin}"


def test_shared_module_file_is_the_repo_copy() -> None:
    import shared

    assert Path(shared.__file__).resolve() == REPO / "shared" / "__init__.py"


# --------------------------------------------------------------------------- the checker itself


def _write(root: Path, rel: str, text: str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


@pytest.fixture
def fake_tree(tmp_path: Path) -> Path:
    _write(tmp_path, "shared/__init__.py", '"""ok"""\nimport json\nfrom shared import raw\n')
    _write(tmp_path, "shared/raw.py", "import numpy as np\nfrom .spec import X\n")
    _write(tmp_path, "shared/spec.py", "X = 1\n")
    for svc in SERVICES:
        _write(tmp_path, f"{svc}/__init__.py", "from shared import spec\n")
    return tmp_path


def test_checker_passes_a_clean_tree(fake_tree: Path) -> None:
    for package, forbidden in RULES.items():
        assert find_violations(fake_tree, package, forbidden) == []


@pytest.mark.parametrize(
    ("rel", "source", "expected_module"),
    [
        ("shared/bad.py", "import fastapi\n", "fastapi"),
        ("shared/bad.py", "import mlflow.sklearn as m\n", "mlflow.sklearn"),
        ("shared/bad.py", "from starlette.requests import Request\n", "starlette.requests"),
        ("shared/bad.py", "def f():\n    import uvicorn\n", "uvicorn"),
        ("shared/bad.py", "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from fti.cli import main\n",
         "fti.cli"),
        ("shared/bad.py", "from inference_service.app import create_app\n", "inference_service.app"),
        ("shared/sub/bad.py", "from ...training_pipeline import model\n", "training_pipeline"),
        ("shared/bad.py", "from .. import feature_pipeline\n", "feature_pipeline"),
        ("shared/bad.py", "import importlib\nimportlib.import_module('mlflow')\n", "mlflow"),
        ("feature_pipeline/bad.py", "from training_pipeline import data\n", "training_pipeline"),
        ("feature_pipeline/bad.py", "from ..inference_service import app\n", "inference_service"),
        ("training_pipeline/bad.py", "import fti.demo_data\n", "fti.demo_data"),
        ("inference_service/routes/bad.py", "from ...feature_pipeline.extract import extract\n",
         "feature_pipeline.extract"),
    ],
)
def test_checker_reports_a_forbidden_import(fake_tree: Path, rel: str, source: str, expected_module: str) -> None:
    _write(fake_tree, rel, source)
    package = rel.split("/")[0]
    violations = find_violations(fake_tree, package, RULES[package])
    assert violations, f"{source!r} in {rel} was not reported"
    assert all(v.file == rel for v in violations)
    assert expected_module in {v.module for v in violations}


def test_checker_does_not_flag_similar_names(fake_tree: Path) -> None:
    # ``mlflow_utils`` is not ``mlflow``; ``shared.fti_helpers`` is not ``fti``.
    _write(fake_tree, "shared/ok.py", "import mlflow_utils\nfrom . import fti_helpers\nimport fastapi_like\n")
    assert find_violations(fake_tree, "shared", RULES["shared"]) == []


def test_relative_import_resolution() -> None:
    tree = ast.parse("from . import a\nfrom .b import c\nfrom ..d import e\n")
    mods = {m for _, m in _imported_modules(tree, ["pkg", "sub", "mod"], False)}
    assert {"pkg.sub", "pkg.sub.a", "pkg.sub.b", "pkg.sub.b.c", "pkg.d", "pkg.d.e"} <= mods
    init = {m for _, m in _imported_modules(ast.parse("from .x import y\n"), ["pkg", "sub"], True)}
    assert "pkg.sub.x" in init
