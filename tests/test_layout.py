"""The package layout: one top-level package once installed, imports through it, and the
direction of dependencies (models imports neither app nor training; training not app)."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("models", "training", "app")


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            out.append(node.module)
    return out


def _sources() -> list[Path]:
    tracked = subprocess.run(["git", "ls-files", "*.py"], cwd=ROOT, capture_output=True,
                             text=True, check=True).stdout.split()  # fmt: skip
    return [ROOT / f for f in tracked if not (ROOT / f).is_symlink()]


def test_every_import_goes_through_rnnlm() -> None:
    # `import models` would load a second copy of the package beside `rnnlm.models`
    # (its classes then differ), and would not exist once installed.
    bare = [f"{p.relative_to(ROOT)}: {m}" for p in _sources() for m in _imports(p)
            if m.split(".")[0] in PACKAGES]  # fmt: skip
    assert not bare, bare


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [("models", ("rnnlm.app", "rnnlm.training")), ("training", ("rnnlm.app",))],
)
def test_dependencies_point_one_way(package: str, forbidden: tuple[str, ...]) -> None:
    wrong = [f"{p.relative_to(ROOT)}: {m}" for p in (ROOT / package).rglob("*.py")
             for m in _imports(p) if m.startswith(forbidden)]  # fmt: skip
    assert not wrong, wrong
    # The rnnlm package itself only through its API and CLI modules, never the reverse.
    shallow = [f"{p.relative_to(ROOT)}: {m}" for p in (ROOT / package).rglob("*.py")
               for m in _imports(p) if m in ("rnnlm", "rnnlm.lm", "rnnlm.cli")]  # fmt: skip
    assert not shallow, shallow


@pytest.mark.parametrize("package", PACKAGES)
def test_no_module_imports_itself_round_a_cycle(package: str) -> None:
    """Within a package the imports form no cycle, counting those made only for type
    checking: a cycle means two modules that are one object in two files."""
    inside = f"rnnlm.{package}."
    graph = {inside + p.stem: {m for m in _imports(p) if m.startswith(inside)}
             for p in (ROOT / package).glob("*.py")}  # fmt: skip
    done: set[str] = set()

    def visit(node: str, path: tuple[str, ...]) -> None:
        assert node not in path, " -> ".join((*path[path.index(node) :], node))
        if node in done:
            return
        for nxt in graph.get(node, ()):
            visit(nxt, (*path, node))
        done.add(node)

    for node in graph:
        visit(node, ())


def test_the_installed_distribution_is_rnnlm_alone(tmp_path: Path) -> None:
    # A copy of the tracked tree (links kept as links), built as `pip install .` builds it.
    src = tmp_path / "src"
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout.split()  # fmt: skip
    for f in tracked:
        (src / f).parent.mkdir(parents=True, exist_ok=True)
        if (ROOT / f).is_symlink():
            os.symlink(os.readlink(ROOT / f), src / f)
        elif (ROOT / f).is_file():
            shutil.copy2(ROOT / f, src / f)
    pip = [sys.executable, "-m", "pip"]
    build = subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                            str(tmp_path / "dist"), str(src)],
                           capture_output=True, text=True, timeout=600)  # fmt: skip
    assert build.returncode == 0, build.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("rnnlm-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names} == {"rnnlm", wheel.name.split("-py")[0] + ".dist-info"}
    for inside in ("rnnlm/models/engine.py", "rnnlm/training/train.py", "rnnlm/app/main.py",
                   "rnnlm/app/static/playground.html", "rnnlm/lm.py", "rnnlm/cli.py"):  # fmt: skip
        assert inside in names, inside
    # Installed into a fresh environment that sees this one's dependencies (torch, ...)
    # but not its editable rnnlm: from another directory, `rnnlm` imports, `models` does not.
    env = tmp_path / "env"
    venv.create(env, with_pip=False)
    site = next((env / "lib").glob("python3*/site-packages"))
    deps = [p for p in sys.path if p.endswith("site-packages")]
    (site / "deps.pth").write_text("\n".join(deps) + "\n")
    zipfile.ZipFile(wheel).extractall(site)
    code = (
        "import importlib.util, rnnlm, rnnlm.models.engine, rnnlm.app.main;"
        "print(rnnlm.__file__);"
        "print(importlib.util.find_spec('models'), importlib.util.find_spec('app'),"
        " importlib.util.find_spec('training'))"
    )
    run = subprocess.run([str(env / "bin" / "python"), "-c", code], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    where, specs = run.stdout.splitlines()
    assert where.startswith(str(site)), where
    assert specs == "None None None"
