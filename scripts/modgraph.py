#!/usr/bin/env python3
"""Module graph of src/ from `crate::` paths (test modules excluded): edges, cycles (strongly
connected components with more than one module)."""
import os, re, sys
src = sys.argv[1] if len(sys.argv) > 1 else "src"
mods = {}
for root, _, files in os.walk(src):
    for f in files:
        if f.endswith(".rs"):
            rel = os.path.relpath(os.path.join(root, f), src)[:-3].split(os.sep)
            if rel[-1] in ("mod", "lib", "main"):
                rel = rel[:-1] or rel
            text = open(os.path.join(root, f), errors="replace").read()
            text = re.split(r"#\[cfg\(test\)\]\s*mod tests", text)[0]
            mods["::".join(rel)] = "\n".join(l.split("//")[0] for l in text.splitlines())
edges = {}
for m, body in mods.items():
    refs = set()
    for seg in re.findall(r"crate::([a-z_][a-z0-9_]*(?:::[a-z_][a-z0-9_]*)*)", body):
        parts = seg.split("::")
        for k in range(len(parts), 0, -1):
            if "::".join(parts[:k]) in mods:
                refs.add("::".join(parts[:k])); break
    # `use super::x` and `super::x` paths
    for seg in re.findall(r"super::([a-z_][a-z0-9_]*)", body):
        parent = m.rsplit("::", 1)[0] if "::" in m else ""
        cand = (parent.rsplit("::",1)[0] + "::" if "::" in parent else "") + seg if parent else seg
        if cand in mods: refs.add(cand)
    refs.discard(m); edges[m] = refs
index, low, stack, on, out, n = {}, {}, [], set(), [], [0]
sys.setrecursionlimit(10000)
def visit(v):
    index[v] = low[v] = n[0]; n[0] += 1; stack.append(v); on.add(v)
    for w in edges.get(v, ()):
        if w not in index:
            visit(w); low[v] = min(low[v], low[w])
        elif w in on:
            low[v] = min(low[v], index[w])
    if low[v] == index[v]:
        c = []
        while True:
            w = stack.pop(); on.discard(w); c.append(w)
            if w == v: break
        if len(c) > 1: out.append(sorted(c))
for v in sorted(edges):
    if v not in index: visit(v)
if "--edges" in sys.argv:
    for m in sorted(edges):
        print(f"{m} -> {', '.join(sorted(edges[m]))}")
print(f"modules: {len(mods)}, edges: {sum(len(e) for e in edges.values())}, cycles: {len(out)}")
for c in out: print("  cycle: " + ", ".join(c))
