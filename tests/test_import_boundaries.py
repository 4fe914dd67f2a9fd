"""The device install is numpy + interpreter + paho-mqtt: edge_runtime must never pull in
torch or tensorflow, directly or through anything it imports."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

FORBIDDEN = {"torch", "tensorflow", "tf_keras", "onnx2tf", "onnx", "onnxruntime", "train", "export"}
EDGE = Path(__file__).resolve().parents[1] / "edge_runtime"


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("path", sorted(EDGE.rglob("*.py")), ids=lambda p: p.name)
def test_no_forbidden_import_statement(path):
    assert not _imports(path) & FORBIDDEN, f"{path} imports {_imports(path) & FORBIDDEN}"


def test_importing_every_module_loads_no_forbidden_package():
    # Catches indirect imports (a helper package that imports torch) the AST check cannot see.
    modules = [".".join(p.relative_to(EDGE.parent).with_suffix("").parts) for p in EDGE.rglob("*.py") if p.stem not in ("__main__", "__init__")]
    code = (
        "import importlib, sys\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        f"bad = sorted(k for k in sys.modules if k.split('.')[0] in {sorted(FORBIDDEN)!r})\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
