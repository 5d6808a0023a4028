"""The package's import graph, read from the source: each part imports only the parts below
it, and no import (not even one inside a function) closes a cycle."""

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "keras_vitnt"

# bottom to top; a module may import its own tier and those before it
TIERS = [
    {"layers", "io_utils", "precision", "optimizers", "data", "openvino_runtime", "peers", "cpu"},  # know nothing of checkpoints or the registry
    {"weights"},  # checkpoints, the hub, timm_map.py: which timm tensor is which Keras weight
    {"models"},  # configs, registry, weights resolver, trunks, builder, constructors
    {"litert", "exporter", "quantization", "features", "visualize", "train", "benchmark", "demo"},
    {"cli"},
]


def _part(module):
    return module.split(".")[1] if module.count(".") else None


def _tier(module):
    return next(i for i, parts in enumerate(TIERS) if _part(module) in parts)


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        yield ".".join(parts[:-1] if parts[-1] == "__init__" else parts), path


MODULES = dict(_modules())


def _imports(path, module):
    """Every keras_vitnt module `module` imports, at the top or inside a function. `from P import m`
    of a submodule m counts as importing P.m; a module's own parent package is not counted
    (Python has run it before the module)."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            raise AssertionError(f"{module}: relative import")
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("keras_vitnt"):
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                target = sub if sub in MODULES else node.module
                if not module.startswith(target + "."):
                    yield target
        elif isinstance(node, ast.Import):
            yield from (a.name for a in node.names if a.name.startswith("keras_vitnt"))


GRAPH = {module: sorted(set(_imports(path, module))) for module, path in MODULES.items()}


@pytest.mark.parametrize("module", sorted(m for m in GRAPH if m != "keras_vitnt"))
def test_imports_go_down_only(module):
    for target in GRAPH[module]:
        assert target != "keras_vitnt", f"{module} imports the package root (the public API); import the part"
        assert _tier(target) <= _tier(module), f"{module} imports {target}, a part above it"


def test_no_import_cycle_even_inside_functions():
    def modules_of(target):  # `from keras_vitnt.models import x` runs keras_vitnt/models/__init__.py
        return [target] if target in GRAPH else []

    done, stack = set(), []

    def visit(module):
        if module in stack:
            raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(module):] + [module]))
        if module in done:
            return
        stack.append(module)
        for target in GRAPH[module]:
            for m in modules_of(target):
                visit(m)
        stack.pop()
        done.add(module)

    for module in GRAPH:
        visit(module)


def test_the_layers_know_nothing_of_checkpoints():
    for module, path in MODULES.items():
        if _part(module) == "layers":
            text = path.read_text()
            assert "timm_params" not in text and "timm_children" not in text and "timm_root" not in text, module
