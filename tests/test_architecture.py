"""The shape docs/ARCHITECTURE.md describes, checked on the source: layers import downward only, no import cycle,
imports at the top of the module except the optional heavy backends, and no file a reader cannot take in."""
from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "groupvit_edge"
# Optional packages a device image may lack; imported where they are needed, through imports.require.
HEAVY = {"torch", "onnx", "onnxruntime", "openvino", "nncf", "tensorrt", "cuda", "onnxconverter_common", "onnxsim",
         "safetensors", "transformers", "huggingface_hub", "cv2", "polygraphy"}
# Modules whose code is written in torch: they import it at the top, and are themselves the optional torch backend.
TORCH_MODULES = ("groupvit_edge.model.",)
# Highest layer first: a module imports modules of its own layer or of lower ones (docs/ARCHITECTURE.md).
LAYERS = (
    ("interface", ("groupvit_edge", "groupvit_edge.cli", "groupvit_edge.cli_options", "groupvit_edge.doctor",
                   "groupvit_edge.info", "groupvit_edge.testing")),
    ("exporters", ("groupvit_edge.exporters", "groupvit_edge.checks")),
    ("quantization", ("groupvit_edge.quantization",)),
    ("metrics", ("groupvit_edge.metrics",)),
    ("segmentation", ("groupvit_edge.segmentation",)),
    ("runtimes", ("groupvit_edge.runtimes",)),
    ("artifact", ("groupvit_edge.artifact", "groupvit_edge.artifact_records")),
    ("graph rules", ("groupvit_edge.quantization.policy", "groupvit_edge.quantization.form")),
    ("model", ("groupvit_edge.model",)),
    ("foundation", ("groupvit_edge.errors", "groupvit_edge.imports", "groupvit_edge.files", "groupvit_edge.hardware",
                    "groupvit_edge.listing", "groupvit_edge.progress", "groupvit_edge.assets",
                    "groupvit_edge.options", "groupvit_edge.tokenizer", "groupvit_edge.version")),
)
MAX_LINES = 450


@dataclass(frozen=True)
class Import:
    source: str        # the importing module
    target: str        # an internal module, or a third-party package's top-level name
    internal: bool
    top_level: bool    # at module level (not in a function, and not under `if TYPE_CHECKING:`)
    line: int


def modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _type_checking_block(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def _walk(body, top_level: bool):
    """(import node, at module level?) for every import, leaving out type-checking-only ones."""
    for node in body:
        if _type_checking_block(node):
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node, top_level
        nested_top = top_level and not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        for field in ("body", "orelse", "finalbody", "handlers"):
            children = getattr(node, field, None)
            if isinstance(children, list):
                yield from _walk(children, nested_top)


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[:len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports() -> list[Import]:
    known = modules()
    found = []
    for module, path in known.items():
        is_package = path.name == "__init__.py"
        for node, top_level in _walk(ast.parse(path.read_text()).body, True):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                base = _resolve(module, is_package, node)
                names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
            for name in names:
                if name.startswith("groupvit_edge"):
                    while name not in known and "." in name:
                        name = name.rsplit(".", 1)[0]
                    if name != module:
                        found.append(Import(module, name, True, top_level, node.lineno))
                else:
                    found.append(Import(module, name.split(".")[0], False, top_level, node.lineno))
    return found


def _parents(module: str) -> list[str]:
    """The packages Python initialises before `module`."""
    parts = module.split(".")
    return [".".join(parts[:end]) for end in range(1, len(parts))]


def import_graph() -> dict[str, set[str]]:
    """Every internal edge, including the parent packages an import initialises first."""
    graph: dict[str, set[str]] = {module: set() for module in modules()}
    for edge in imports():
        if edge.internal:
            graph[edge.source].update(parent for parent in [*_parents(edge.target), edge.target]
                                      if parent != edge.source and parent not in _parents(edge.source))
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in graph[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def layer_of(module: str) -> int:
    # The package root is a layer of its own: its name prefixes every module.
    matches = [(len(prefix), rank) for rank, (_, prefixes) in enumerate(LAYERS) for prefix in prefixes
               if module == prefix or (prefix != "groupvit_edge" and module.startswith(prefix + "."))]
    assert matches, f"{module} belongs to no layer: add it to LAYERS and to docs/ARCHITECTURE.md"
    return max(matches)[1]


def heavy_bound() -> set[str]:
    """Modules that need an optional heavy package to import: those importing one at the top (the torch modules),
    and what imports them at the top."""
    found = imports()
    bound = {edge.source for edge in found if not edge.internal and edge.top_level and edge.target in HEAVY}
    edges = [edge for edge in found if edge.internal and edge.top_level]
    grew = True
    while grew:
        grew = False
        for edge in edges:
            if edge.target in bound and edge.source not in bound:
                bound.add(edge.source)
                grew = True
    return bound


def test_the_import_graph_has_no_cycle():
    assert cycles(import_graph()) == []


def test_every_module_imports_only_its_own_layer_or_lower_ones():
    upward = [f"{edge.source}:{edge.line} imports {edge.target} ({LAYERS[layer_of(edge.target)][0]} is above "
              f"{LAYERS[layer_of(edge.source)][0]})"
              for edge in imports() if edge.internal and layer_of(edge.target) < layer_of(edge.source)]
    assert upward == []


def test_imports_sit_at_the_top_except_the_optional_heavy_backends():
    bound = heavy_bound()
    misplaced = [f"{edge.source}:{edge.line} imports {edge.target} inside a function"
                 for edge in imports() if not edge.top_level
                 and not (edge.internal and edge.target in bound)
                 and not (not edge.internal and edge.target in HEAVY)]
    assert misplaced == []


def test_heavy_backends_are_imported_through_require_outside_the_torch_modules():
    direct = [f"{edge.source}:{edge.line} imports {edge.target}" for edge in imports()
              if not edge.internal and edge.target in HEAVY and not edge.source.startswith(TORCH_MODULES)]
    assert direct == []


def test_no_file_is_longer_than_a_reader_takes_in():
    long = {str(path.relative_to(PACKAGE)): count for path in PACKAGE.rglob("*.py")
            if (count := len(path.read_text().splitlines())) > MAX_LINES}
    assert long == {}


def test_nothing_outside_the_artifact_module_indexes_the_manifest_dict():
    readers = [f"{path.relative_to(PACKAGE)}:{number}" for path in PACKAGE.rglob("*.py") if path.name != "artifact.py"
               for number, line in enumerate(path.read_text().splitlines(), 1) if "manifest.data[" in line]
    assert readers == []


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
