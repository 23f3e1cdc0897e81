"""The house: tfvae's modules import one way (no circles), heads/ stands on nothing of tfvae's, and no
module outgrows a sitting."""

import ast
import glob
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# About 500 lines a module (the issue of the house); the VAE class about 300 (it is 396: its docstring, config
# and the public questions).
MAX_MODULE_LINES = 500


def _modules():
    """{module name: path} of every module of the tfvae package."""
    paths = glob.glob(os.path.join(ROOT, "tfvae", "**", "*.py"), recursive=True)
    return {os.path.relpath(p, ROOT)[:-3].replace(os.sep, ".").removesuffix(".__init__"): p for p in paths}


def _imports(modules):
    """{module: the tfvae modules it imports at its top level} (imports inside functions are lazy by design)."""
    graph = {}
    for name, path in modules.items():
        tree = ast.parse(open(path, encoding="utf-8").read())
        imported = set()
        for node in tree.body:
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "tfvae":
                for alias in node.names:
                    sub = f"{node.module}.{alias.name}"
                    imported.add(sub if sub in modules else node.module)
            elif isinstance(node, ast.Import):
                imported |= {a.name for a in node.names if a.name.split(".")[0] == "tfvae"}
        graph[name] = imported - {name}
    return graph


def test_imports_run_one_way_with_no_circle():
    graph = _imports(_modules())
    done, circles = set(), []

    def visit(name, path):
        for imported in graph.get(name, ()):
            if imported in path:
                circles.append(" -> ".join([*path[path.index(imported):], imported]))
            elif imported not in done:
                visit(imported, [*path, imported])
        done.add(name)

    for name in graph:
        visit(name, [name])
    assert not circles


def test_heads_import_nothing_of_tfvae_but_themselves():
    graph = _imports(_modules())
    for name, imported in graph.items():
        if name.startswith("tfvae.heads"):
            assert all(i.startswith("tfvae.heads") for i in imported), (name, imported)


def test_no_module_is_over_about_500_lines():
    sizes = {name: sum(1 for _ in open(path, encoding="utf-8")) for name, path in _modules().items()}
    assert {name: n for name, n in sizes.items() if n > MAX_MODULE_LINES} == {}
