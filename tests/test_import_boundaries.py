"""Dependencies point one way (see DESIGN.md): the device install is numpy + interpreter +
paho-mqtt, so edge_runtime never pulls in torch, tensorflow, train, export, server or the
meerkit umbrella; train, export and server take from edge_runtime only its numpy-only
contract (the server also the one paho factory); the contract stands alone; and nothing below
the umbrella imports `meerkit`. Checked on the source (every import statement, including
those inside functions, and importlib.import_module("literal")), then by importing."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("edge_runtime", "train", "export", "server", "meerkit")
THIRD_PARTY_FORBIDDEN_ON_DEVICE = {"torch", "tensorflow", "tf_keras", "onnx2tf", "onnx",
                                   "onnxruntime"}
EDGE = ROOT / "edge_runtime"


class Import(NamedTuple):
    where: str  # path:line
    importer: str  # dotted module doing the import
    module: str  # dotted module imported


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _resolve(base: str, name: str) -> str:
    """`from base import name`: the submodule base.name when it exists in the tree, else base."""
    candidate = f"{base}.{name}"
    path = ROOT.joinpath(*candidate.split("."))
    return candidate if path.with_suffix(".py").is_file() or path.is_dir() else base


def imports(path: Path) -> list[Import]:
    importer = module_name(path)
    package = importer if path.stem == "__init__" else importer.rpartition(".")[0]
    where = lambda node: f"{path.relative_to(ROOT)}:{node.lineno}"  # noqa: E731
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [Import(where(node), importer, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package `level - 1` steps above this one
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            found += [Import(where(node), importer, _resolve(base, a.name)) for a in node.names]
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr == "import_module" and node.args
              and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            found.append(Import(where(node), importer, node.args[0].value))
    return found


def all_imports() -> list[Import]:
    return [imp for package in PACKAGES for path in sorted((ROOT / package).rglob("*.py"))
            for imp in imports(path)]


def under(module: str, *prefixes: str) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


class Rule(NamedTuple):
    name: str
    importers: tuple[str, ...]  # the rule applies to modules under these
    forbidden: tuple[str, ...]  # they may not import modules under these...
    allowed: tuple[str, ...] = ()  # ...except those under these


RULES = [
    Rule("edge_runtime imports nothing of train, export, server or meerkit",
         ("edge_runtime",), ("train", "export", "server", "meerkit")),
    Rule("edge_runtime never imports torch, tensorflow or the ONNX toolchain",
         ("edge_runtime",), tuple(sorted(THIRD_PARTY_FORBIDDEN_ON_DEVICE))),
    Rule("train and export take only edge_runtime.contract from edge_runtime",
         ("train", "export"), ("edge_runtime",), ("edge_runtime.contract",)),
    Rule("server takes only the contract and the paho factory from edge_runtime",
         ("server",), ("edge_runtime",), ("edge_runtime.contract", "edge_runtime.mqtt_client")),
    Rule("server imports nothing of train, export or meerkit",
         ("server",), ("train", "export", "meerkit")),
    Rule("nothing below the umbrella imports meerkit",
         ("edge_runtime", "train", "export", "server"), ("meerkit",)),
    Rule("edge_runtime.contract imports nothing else of edge_runtime",
         ("edge_runtime.contract",), ("edge_runtime",), ("edge_runtime.contract",)),
]


def violations(rule: Rule, found: list[Import]) -> list[str]:
    return [f"{imp.where} imports {imp.module}" for imp in found
            if under(imp.importer, *rule.importers) and under(imp.module, *rule.forbidden)
            and not under(imp.module, *rule.allowed)]


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.name)
def test_import_boundary(rule: Rule):
    bad = violations(rule, all_imports())
    assert not bad, f"{rule.name}:\n  " + "\n  ".join(bad)


def test_the_checker_sees_every_kind_of_import(tmp_path, monkeypatch):
    # A rule that finds nothing because the parser missed an import form would pass silently.
    (tmp_path / "pkg" / "sub").mkdir(parents=True)
    (tmp_path / "pkg" / "errors.py").write_text("")
    source = tmp_path / "pkg" / "sub" / "m.py"
    source.write_text("import a.b\nfrom c import d\nfrom .. import errors\nfrom ..x import y\n"
                      "def f():\n    import train.cli\n"
                      "    importlib.import_module('server.cli')\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    assert [imp.module for imp in imports(source)] == [
        "a.b", "c", "pkg.errors", "pkg.x", "train.cli", "server.cli"]
    assert imports(source)[0] == Import("pkg/sub/m.py:1", "pkg.sub.m", "a.b")


def test_importing_every_edge_module_loads_no_forbidden_package():
    # Catches indirect imports (a helper package that imports torch) the AST check cannot see.
    forbidden = THIRD_PARTY_FORBIDDEN_ON_DEVICE | {"train", "export", "server", "meerkit"}
    modules = [module_name(p) for p in EDGE.rglob("*.py") if p.stem != "__main__"]
    code = (
        "import importlib, sys\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        f"bad = sorted(k for k in sys.modules if k.split('.')[0] in {sorted(forbidden)!r})\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, check=True)
    assert out.stdout.strip() == ""
