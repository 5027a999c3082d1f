"""The project's imports run one way: entry points -> objectives/variants -> model/attention. Parsed from the source,
so a wrong-way import fails here even if nothing executes it."""
import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ENTRY_POINTS = {"train", "sample", "bench", "launch", "tools.eval", "tools.analysis", "tools.export", "tools.plot"}
CORE = {"model", "attention"}  # the plain GPT and its kernels: they import no variant, objective or entry point


def project_modules():
    """{module name: path} of the project's python modules outside tests/, results/ and data/."""
    mods = {p.stem: p for p in REPO.glob("*.py")}
    for package in ("variants", "infra", "tools"):
        mods.update({f"{package}.{p.stem}" if p.stem != "__init__" else package: p
                     for p in (REPO / package).glob("*.py")})
    return mods


def imports_of(path, known):
    """The project modules a file imports anywhere in it (module level or inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        found |= {n for n in names if n in known}
    return found


def import_graph():
    mods = project_modules()
    graph = {name: imports_of(path, mods) - {name} for name, path in mods.items()}
    # the variants package registers every file in it and adaptive_attention_span.py by importing them dynamically
    graph["variants"] |= {m for m in mods if m.startswith("variants.") and m != "variants.registry"}
    graph["variants"].add("adaptive_attention_span")
    return graph


def is_variant(name):
    return name == "adaptive_attention_span" or (name.startswith("variants.") and name != "variants.registry")


def wrong_way(graph):
    """(importer, imported, rule) for every import that breaks the layering."""
    bad = []
    for mod, deps in graph.items():
        for dep in deps:
            if mod in CORE and (is_variant(dep) or dep in ("variants", "variants.registry", "objectives")
                                or dep in ("infra.configurator", "infra.checkpoint") or dep in ENTRY_POINTS):
                bad.append((mod, dep, "model/attention import no variant, objective or entry point"))
            below = is_variant(mod) or mod in ("objectives", "variants.registry") or mod.startswith("infra.")
            if below and mod != "infra.configurator" and (dep in ENTRY_POINTS or dep == "infra.configurator"):
                bad.append((mod, dep, "below the entry points nothing imports configurator or an entry point"))
            if mod == "objectives" and (is_variant(dep) or dep.startswith("variants")):
                bad.append((mod, dep, "objectives import no variant"))
    return bad


def cycles(graph):
    """Every import cycle, as a list of module names."""
    found, state = [], {}

    def visit(node, stack):
        state[node] = "open"
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == "open":
                found.append(stack[stack.index(dep):] + [dep])
            elif dep not in state:
                visit(dep, stack)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
    return found


def test_imports_run_one_way_without_cycles():
    graph = import_graph()
    assert "variants.llama" in graph and "model" in graph["variants.llama"]  # the parser sees real imports
    assert wrong_way(graph) == []
    assert cycles(graph) == []


@pytest.mark.parametrize("mod,dep", [("model", "variants.llama"), ("attention", "objectives"),
                                     ("variants.llama", "infra.configurator"),
                                     ("infra.memory", "infra.configurator"), ("infra.loader", "tools.eval"), ("objectives", "train"),
                                     ("model", "train")])
def test_a_wrong_way_import_is_caught(mod, dep):
    graph = import_graph()
    graph[mod] = graph[mod] | {dep}
    assert any(m == mod and d == dep for m, d, _ in wrong_way(graph))


def test_a_cycle_is_caught():
    graph = import_graph()
    graph["attention"] = graph["attention"] | {"model"}  # model imports attention
    assert ["attention", "model", "attention"] in cycles(graph) or ["model", "attention", "model"] in cycles(graph)
