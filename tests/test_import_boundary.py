"""The layers are enforced: core, synth and runtime import with torch & co. unimportable."""

import subprocess
import sys
import textwrap

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
