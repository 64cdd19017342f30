"""The package's layers import one way: no module imports a higher layer, and no modules import each other in a
cycle (imports inside functions count: they are dependencies too). The order is README.md's "Architecture"."""

import ast
import os

import pytest

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "metaportrait_jax")

# Bottom to top; a module may import its own layer and those below it.
LAYERS = (
    ("errors", "config"),   # user errors, config files
    ("ops",),               # pure jnp
    ("media",),             # video and image files
    ("models",),            # Flax modules, model configs
    ("losses",),
    ("meta",),              # adaptation as pure functions
    ("data",),              # frame sources, TFDS builders, grain pipelines
    ("train",),             # steps, sharding, checkpoints, the loop, multi-process jobs
    ("convert",),           # official PyTorch checkpoints <-> ours
    ("eval",),              # animation, metrics, adaptation curves, SR inference
    ("api",),               # the public Python API
    ("cli",),               # the command line over it
)
RANK = {name: rank for rank, names in enumerate(LAYERS) for name in names}


def module_imports(root: str, package: str) -> dict[str, set[str]]:
    """{module: the package's modules it imports} for every .py file under `root` (the package's directory)."""
    graph = {}
    for directory, _, files in os.walk(root):
        for file in sorted(f for f in files if f.endswith(".py")):
            path = os.path.join(directory, file)
            parts = [package, *os.path.relpath(path, root)[:-3].split(os.sep)]
            module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            with open(path) as f:
                tree = ast.parse(f.read(), path)
            imported = set()
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    imported |= {a.name for a in node.names}
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    # `from package.x import y` may import the module package.x.y
                    imported |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
            graph[module] = {name for name in imported if name == package or name.startswith(package + ".")}
    return {module: {name for name in names if name in graph and name != module} for module, names in graph.items()}


def layer_of(module: str) -> str:
    """`pkg.train.loop` -> "train"; `pkg.losses` -> "losses"; the package itself -> "errors" (it holds nothing)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "errors"


def layering_problems(graph: dict[str, set[str]]) -> list[str]:
    problems = [f"{module} is in no layer of LAYERS" for module in sorted(graph) if layer_of(module) not in RANK]
    for module, imported in sorted(graph.items()):
        for name in sorted(imported):
            if layer_of(module) in RANK and RANK.get(layer_of(name), 0) > RANK[layer_of(module)]:
                problems.append(f"{module} ({layer_of(module)}) imports {name} ({layer_of(name)}), a higher layer")
    return problems + [f"import cycle: {' -> '.join(cycle)}" for cycle in import_cycles(graph)]


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The cycles (closed paths) that a depth-first walk of the import graph closes: none when imports go one way."""
    cycles, state = [], {}  # state: 1 = on the current path, 2 = done

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for name in sorted(graph[module]):
            if state.get(name) == 1:
                cycles.append(path[path.index(name):] + [name])
            elif name not in state:
                visit(name, path + [name])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    return cycles


def test_no_module_imports_a_higher_layer_or_a_cycle():
    graph = module_imports(PACKAGE, "metaportrait_jax")
    assert len(graph) > 50 and any("metaportrait_jax.train.loop" in names for names in graph.values())
    assert layering_problems(graph) == []


@pytest.mark.parametrize("wrong, expected", [
    ("import metaportrait_jax.train.loop",  # which train/loop.py imports back
     ["metaportrait_jax.data.sources (data) imports metaportrait_jax.train.loop (train), a higher layer",
      "import cycle: metaportrait_jax.data.pipeline -> metaportrait_jax.data.sources -> metaportrait_jax.train.loop "
      "-> metaportrait_jax.data.pipeline"]),
    ("from metaportrait_jax.data import pipeline",
     ["import cycle: metaportrait_jax.data.pipeline -> metaportrait_jax.data.sources -> "
      "metaportrait_jax.data.pipeline"]),
])
def test_a_wrong_import_is_named(tmp_path, wrong, expected):
    """The checker on a copy of the package's shape where data/sources.py gained one wrong import."""
    for module, source in {"__init__": "", "data/__init__": "", "data/pipeline": "from metaportrait_jax.data import "
                           "sources\n", "data/sources": f"def f():\n    {wrong}\n", "train/__init__": "",
                           "train/loop": "import metaportrait_jax.data.pipeline\n"}.items():
        path = tmp_path / "metaportrait_jax" / f"{module}.py"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(source)
    assert layering_problems(module_imports(str(tmp_path / "metaportrait_jax"), "metaportrait_jax")) == expected


def test_the_package_reads_recipes_only_through_load_config():
    """configs/ sits above every layer: the package loads a recipe file (`load_config`), never imports one."""
    importers = []
    for directory, _, files in os.walk(PACKAGE):
        for file in (f for f in files if f.endswith(".py")):
            with open(os.path.join(directory, file)) as f:
                tree = ast.parse(f.read())
            names = [a.name for node in ast.walk(tree) if isinstance(node, ast.Import) for a in node.names]
            names += [node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module]
            if any(name == "configs" or name.startswith("configs.") for name in names):
                importers.append(os.path.relpath(os.path.join(directory, file), PACKAGE))
    assert importers == []
