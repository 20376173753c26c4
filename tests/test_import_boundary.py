"""The layers are enforced: no module imports a layer above it (a static scan of every import,
function-level ones included), and core, synth and runtime import with torch & co. unimportable.

The layer order is docs/architecture.md's table "Layers and what each may import".
"""

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import mscvision

PACKAGE = Path(mscvision.__file__).parent
# rank of each layer: a module may import its own layer or a lower rank, never a higher one; two
# layers of one rank (synth, runtime) may not import each other. `mscvision/__init__.py` is the root:
# it holds only the version, which any layer may read.
RANKS = {"root": 0, "core": 0, "synth": 1, "runtime": 1, "training": 2, "export": 3, "benchmarks": 4, "commands": 5}
# top-level names under src/mscvision -> their layer (the console script belongs to the command layer)
LAYER_OF = {"__init__": "root", "core": "core", "synth": "synth", "runtime": "runtime", "training": "training",
            "export": "export", "benchmarks": "benchmarks", "commands": "commands", "cli": "commands",
            "__main__": "commands"}

# third-party packages (import names) each station layer may import: docs/architecture.md's table. A
# station installs only the base dependencies of pyproject.toml; anything else in core, synth or
# runtime breaks `pip install mscvision`. yaml: the QC acceptance spec (core/qcspec.py).
CORE_THIRD_PARTY = {"numpy", "PIL", "tifffile", "cryptography", "yaml"}
THIRD_PARTY = {"core": CORE_THIRD_PARTY, "synth": CORE_THIRD_PARTY,
               "runtime": CORE_THIRD_PARTY | {"onnxruntime"}}


def _module_name(path: Path, root: Path) -> list[str]:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return parts[:-1] if parts[-1] == "__init__" else parts


def _layer(parts: list[str]) -> str:
    """The layer of ``mscvision.<parts>``; KeyError for a top-level name the table does not rank."""
    return LAYER_OF[parts[0] if parts else "__init__"]


def imported_mscvision_names(path: Path, root: Path = PACKAGE) -> list[tuple[int, list[str]]]:
    """(line, the mscvision.* name split on dots, without "mscvision") of every import in the file,
    at any depth (lazy imports inside functions count), relative imports resolved."""
    own = _module_name(path, root)
    package = own if path.name == "__init__.py" else own[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name.split(".")[1:]) for a in node.names
                      if a.name.split(".")[0] == "mscvision"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ["mscvision", *package[:len(package) - node.level + 1]]
                module = [*base, *(node.module.split(".") if node.module else [])]
            else:
                module = node.module.split(".")
            if module[0] != "mscvision":
                continue
            if len(module) == 1:  # `from mscvision import X`: X is a layer or a name of the root
                found += [(node.lineno, [a.name] if a.name in LAYER_OF else []) for a in node.names]
            else:
                found.append((node.lineno, module[1:]))
    return found


def upward_imports(root: Path = PACKAGE) -> list[str]:
    problems = []
    for path in sorted(root.rglob("*.py")):
        own = _layer(_module_name(path, root))
        for line, target in imported_mscvision_names(path, root):
            other = _layer(target)
            if other not in (own, "root") and RANKS[other] >= RANKS[own]:
                name = ".".join(["mscvision", *target])
                problems.append(f"{path.relative_to(root.parent)}:{line}: {own} (rank {RANKS[own]}) imports "
                                f"{name}, layer {other} (rank {RANKS[other]})")
    return problems


def third_party_imports(path: Path) -> set[str]:
    """Top-level names of the absolute, non-mscvision, non-stdlib imports of a file, at any depth."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            names.add(node.module.split(".")[0])
    return names - set(sys.stdlib_module_names) - {"mscvision", "__future__"}


def test_station_layers_import_only_their_declared_third_party_packages():
    problems = [f"{path.relative_to(PACKAGE.parent)}: imports {name} (allowed in {layer}: "
                f"{', '.join(sorted(THIRD_PARTY[layer]))})"
                for layer in THIRD_PARTY for path in sorted((PACKAGE / layer).rglob("*.py"))
                for name in sorted(third_party_imports(path) - THIRD_PARTY[layer])]
    assert not problems, ("station layers import packages a station install lacks (add the package to "
                          "pyproject.toml's base dependencies and THIRD_PARTY, or move the code up a layer):\n"
                          + "\n".join(problems))


def test_the_third_party_scan_sees_lazy_imports(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("import os, yaml\nfrom numpy import linalg\nfrom . import x\n"
                      "def f():\n    import torch.nn\n")
    assert third_party_imports(module) == {"yaml", "numpy", "torch"}
    assert third_party_imports(module) - THIRD_PARTY["core"] == {"torch"}


def test_every_top_level_package_has_a_layer():
    names = {p.stem if p.is_file() else p.name for p in PACKAGE.iterdir()
             if (p.suffix == ".py") or (p / "__init__.py").is_file()}
    unranked = sorted(names - set(LAYER_OF))
    assert not unranked, f"{unranked}: give each a layer in LAYER_OF (and docs/architecture.md's layer table)"


def test_no_module_imports_a_layer_above_it():
    problems = upward_imports()
    assert not problems, "imports that point up a layer:\n" + "\n".join(problems)


def test_the_scan_sees_lazy_relative_and_root_imports(tmp_path):
    (tmp_path / "mscvision" / "core").mkdir(parents=True)
    (tmp_path / "mscvision" / "__init__.py").write_text("")
    (tmp_path / "mscvision" / "core" / "__init__.py").write_text("")
    (tmp_path / "mscvision" / "core" / "bad.py").write_text(textwrap.dedent("""
        from mscvision import __version__            # the root: allowed
        from mscvision.core.errors import DataError  # own layer: allowed
        def lazy():
            import mscvision.training.fit
            from ..export import pipeline
            from mscvision import runtime
    """))
    problems = upward_imports(tmp_path / "mscvision")
    assert [p.split(": ", 1)[1] for p in problems] == [
        "core (rank 0) imports mscvision.training.fit, layer training (rank 2)",
        "core (rank 0) imports mscvision.export, layer export (rank 3)",
        "core (rank 0) imports mscvision.runtime, layer runtime (rank 1)"]


BLOCKER = textwrap.dedent("""
    import importlib.abc, pkgutil, sys
    BLOCKED = {"torch", "torchvision", "lightning", "albumentations", "onnx", "onnxscript", "sklearn"}

    class Blocker(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"blocked import of {name}")

    sys.meta_path.insert(0, Blocker())
    import mscvision
    imported = []
    for package in PACKAGES:
        module = __import__(package, fromlist=["_"])
        imported.append(package)
        for info in pkgutil.walk_packages(module.__path__, package + "."):
            __import__(info.name)
            imported.append(info.name)
    from mscvision.cli import build_parser
    build_parser().format_help()
    print(len(imported), sorted(imported))
""")


def _import_all(packages):
    code = f"PACKAGES = {packages!r}\n" + BLOCKER
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_core_synth_and_runtime_import_without_torch():
    packages = ["mscvision.core", "mscvision.synth"]
    try:
        import mscvision.runtime  # noqa: F401

        packages.append("mscvision.runtime")
    except ImportError:
        pass
    result = _import_all(packages)
    assert result.returncode == 0, result.stderr
    for package in packages:
        assert package in result.stdout


def test_the_blocker_really_blocks():
    code = BLOCKER.replace("import mscvision\n", "import mscvision.training.module\n")
    result = subprocess.run([sys.executable, "-c", "PACKAGES = []\n" + code], capture_output=True, text=True)
    assert result.returncode != 0 and "blocked import of" in result.stderr
