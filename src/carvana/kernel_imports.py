"""Which third-party packages a built kernel needs: the imports its own code path reaches.

The scan follows names, not whole files: a module's top-level imports always count (they run
when it is imported), but an import inside a function counts only when that function (or class)
is reachable from the entry code, through imports or calls by name. So the predict kernel does
not require keras_cv because `train_kernel`, which it never calls, imports the training stage
lazily. An import guarded by `try: ... except ImportError` whose handler goes on without it
is optional and never required; one whose handler raises (a clearer message) is required.
"""

from __future__ import annotations

import ast
import sys
from dataclasses import dataclass, field
from pathlib import Path

# pip names of import names that differ, for the kernel's missing-package message
PIP_NAMES = {
    "cv2": "opencv-python-headless",
    "PIL": "Pillow",
    "keras_cv": "keras-cv",
    "sklearn": "scikit-learn",
    "skimage": "scikit-image",
    "yaml": "PyYAML",
}
PACKAGE = "carvana"
ENTRY = "__entry__"


@dataclass
class _Unit:
    """What one piece of code imports and which names it uses."""

    third: set[str] = field(default_factory=set)  # third-party top-level modules
    own: set[tuple[str, str | None]] = field(default_factory=set)  # (carvana module, attribute)
    aliases: dict[str, str] = field(default_factory=dict)  # local name -> carvana module
    names: set[str] = field(default_factory=set)  # names read
    attrs: set[tuple[str, str]] = field(default_factory=set)  # (name, attribute) read
    bare: set[str] = field(default_factory=set)  # names read other than as `name.attribute`


@dataclass
class _Module:
    body: _Unit
    defs: dict[str, _Unit]


def _is_optional(node: ast.Try) -> bool:
    """A try whose ImportError handler goes on without the module (does not raise)."""
    for handler in node.handlers:
        kinds = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
        names = {k.id for k in kinds if isinstance(k, ast.Name)}
        raises = any(isinstance(n, ast.Raise) for n in ast.walk(handler))
        if names & {"ImportError", "ModuleNotFoundError"} and not raises:
            return True
    return False


def _add_import(unit: _Unit, node: ast.Import | ast.ImportFrom, src: Path) -> None:
    if isinstance(node, ast.Import):
        for alias in node.names:
            top = alias.name.split(".")[0]
            if top == PACKAGE:
                unit.own.add((".".join(alias.name.split(".")[:2]), None))
            elif top not in sys.stdlib_module_names:
                unit.third.add(top)
        return
    if node.module == "__future__":
        return
    base = node.module or ""
    if node.level:  # relative, inside the flat carvana package
        base = PACKAGE + (f".{base}" if base else "")
    top = base.split(".")[0]
    if top != PACKAGE:
        if top and top not in sys.stdlib_module_names:
            unit.third.add(top)
        return
    module = ".".join(base.split(".")[:2])
    for alias in node.names:
        if module == PACKAGE and (src / f"{alias.name}.py").is_file():
            unit.own.add((f"{PACKAGE}.{alias.name}", None))  # `from carvana import files`
            unit.aliases[alias.asname or alias.name] = f"{PACKAGE}.{alias.name}"
        else:
            unit.own.add((module, alias.name))


def _scan(nodes: list[ast.AST], src: Path) -> _Unit:
    """Imports and names of some statements, optional imports left out."""
    unit = _Unit()
    attribute_bases: set[int] = set()

    def visit(node: ast.AST, optional: bool) -> None:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            if not optional:
                _add_import(unit, node, src)
            return
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            unit.attrs.add((node.value.id, node.attr))
            attribute_bases.add(id(node.value))
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load):
            unit.names.add(node.id)
            if id(node) not in attribute_bases:
                unit.bare.add(node.id)
        guarded = isinstance(node, ast.Try) and _is_optional(node)
        for child in ast.iter_child_nodes(node):
            visit(child, optional or guarded)

    for node in nodes:
        visit(node, False)
    return unit


def _parse(text: str, src: Path) -> _Module:
    tree = ast.parse(text)
    kinds = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
    defs = {n.name: _scan([n], src) for n in tree.body if isinstance(n, kinds)}
    body = _scan([n for n in tree.body if not isinstance(n, kinds)], src)
    return _Module(body, defs)


class _Reach:
    """The units reachable from an entry script, and the third-party modules they import."""

    def __init__(self, entry_code: str, src: Path):
        self.src = src
        self.modules = {ENTRY: _parse(entry_code, src)}
        self.seen: set[tuple[str, str | None]] = set()
        self.third: set[str] = set()
        self.todo: list[tuple[str, str | None]] = [(ENTRY, None)]
        self.todo += [(ENTRY, name) for name in self.modules[ENTRY].defs]

    def module(self, name: str, must: bool) -> _Module | None:
        if name not in self.modules:
            rel = name.split(".", 1)[1] + ".py" if "." in name else "__init__.py"
            path = self.src / rel
            if not path.is_file():
                if must:
                    raise ValueError(f"{name} is imported but there is no {path}")
                return None
            self.modules[name] = _parse(path.read_text(encoding="utf-8"), self.src)
        return self.modules[name]

    def run(self) -> set[str]:
        while self.todo:
            key = self.todo.pop()
            if key in self.seen:
                continue
            self.seen.add(key)
            name, attr = key
            info = self.module(name, must=True)
            unit = info.body if attr is None else info.defs.get(attr)
            if attr is not None:
                self.todo.append((name, None))  # importing a name runs its module
            if unit is not None:
                self.follow(name, info, unit)
        return self.third

    def follow(self, name: str, info: _Module, unit: _Unit) -> None:
        self.third |= unit.third
        for module, attr in unit.own:
            self.module(module, must=True)
            self.todo.append((module, None))
            if attr is not None:
                self.todo.append((module, attr))
        self.todo += [(name, n) for n in unit.names if n in info.defs]
        aliases = {**info.body.aliases, **unit.aliases}
        self.todo += [(aliases[n], a) for n, a in unit.attrs if n in aliases]
        for alias in unit.bare & set(aliases):  # a module passed around: all of it may run
            module = aliases[alias]
            self.todo += [(module, d) for d in self.module(module, must=True).defs]


def required_packages(entry_code: str, src: Path) -> dict[str, str]:
    """Third-party modules (import name -> pip name) that the entry code reaches through carvana."""
    needed = _Reach(entry_code, Path(src)).run()
    return {m: PIP_NAMES.get(m, m) for m in sorted(needed)}
