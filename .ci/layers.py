#!/usr/bin/env python3
"""Checks that turnflow's modules import one way: no module reaches a higher layer, and no two
top-level modules import each other. A reference is any `crate::NAME` (or `super::`-free path
to another top-level module) outside comments and tests; the layers are those of src/lib.rs's
crate guide, bottom first."""
import os
import re
import sys

# Bottom to top. A module may use modules of its own layer or lower, never higher; within a
# layer the imports must not form a cycle.
LAYERS = [
    ["text", "error", "failover", "net", "audio"],
    ["ws"],
    ["flux"],
    ["scenario"],
    ["llm", "tts", "tools"],
    ["engine"],
    ["report", "recording"],
    ["emulator", "call"],
    ["server", "sim"],
    ["lab"],
]
LAYER_OF = {m: i for i, layer in enumerate(LAYERS) for m in layer}
TEST_MODULE = re.compile(r"#\[cfg\(test\)\]\s*mod tests\b.*", re.S)
REFERENCE = re.compile(r"\bcrate::(\w+)")


def code_of(path):
    text = open(path, encoding="utf-8").read()
    text = TEST_MODULE.sub("", text)
    lines = [l for l in text.splitlines() if not l.lstrip().startswith("//")]
    return "\n".join(lines)


def cycles(edges):
    """Every import cycle between top-level modules, found by depth-first search."""
    found, state = [], {}

    def visit(node, path):
        state[node] = "open"
        for target in sorted(edges.get(node, ())):
            if state.get(target) == "open":
                found.append("import cycle: " + " -> ".join(path[path.index(target):] + [target]))
            elif target not in state:
                visit(target, path + [target])
        state[node] = "done"

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    return found


def main():
    root = os.path.join(os.path.dirname(__file__), "..", "src")
    edges = {}
    problems = []
    for dirpath, _, files in os.walk(root):
        for name in files:
            if not name.endswith(".rs"):
                continue
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, root)
            top = rel.split(os.sep)[0].removesuffix(".rs")
            if top in ("lib", "bin", "web"):
                continue
            if top not in LAYER_OF:
                problems.append(f"{rel}: module {top} is in no layer of .ci/layers.py")
                continue
            for target in set(REFERENCE.findall(code_of(path))):
                if target == top or target not in LAYER_OF:
                    continue
                edges.setdefault(top, set()).add(target)
                if LAYER_OF[target] > LAYER_OF[top]:
                    problems.append(f"{rel}: {top} (layer {LAYER_OF[top]}) uses {target} (layer {LAYER_OF[target]}), a higher layer")
    problems.extend(cycles(edges))
    for p in sorted(set(problems)):
        print(p)
    if problems:
        return 1
    print(f"layers: {sum(len(t) for t in edges.values())} imports between {len(edges)} modules, all downward or level, no cycle")
    return 0


if __name__ == "__main__":
    sys.exit(main())
