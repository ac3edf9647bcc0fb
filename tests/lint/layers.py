#!/usr/bin/env python3
"""The layering check: no engine module calls a module above it.

The module graph comes from the object files themselves: `nm` lists what each
object defines and what it leaves undefined, and an undefined symbol that
another engine object defines is an edge caller -> callee. Each module's
layer comes from tests/lint/layers.txt (the one copy of the table; DESIGN.md
and daemon/README.md describe it). The check fails on

  - an edge to a higher layer (every such edge is printed with its symbol),
  - a cycle in the module graph (calls inside one layer are allowed, loops
    are not),
  - an object whose module is not in the table (a new module must be placed).

With --known FILE, edges listed there ("caller callee symbol" per line) are
reported as known and do not fail the check, and cycles are looked for in
the graph without them; a listed edge that no longer exists is reported as
stale. --list prints every edge, with its direction, and exits 0.

Usage: layers.py [--table FILE] [--known FILE] [--list] [--nm NM]
                 (BUILD_DIR | --objects FILE.o...)
A BUILD_DIR is searched for the objects of the fetchd_engine and fetchd
targets; ctest passes the exact list ($<TARGET_OBJECTS:...>) instead, so an
object left behind by a removed source file cannot confuse it.
Exit status: 0 clean, 1 violations or cycles, 2 usage or setup error.
"""

import argparse
import glob
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))

# Targets whose objects make up the engine and its main(), inside a CMake
# build tree.
TARGET_DIRS = ("fetchd_engine.dir", "fetchd.dir")


class SetupError(Exception):
    pass


def read_table(path):
    """Returns ({module: layer number}, {layer number: layer name})."""
    layer_of, names = {}, {}
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            line = line.split("#", 1)[0].split()
            if not line:
                continue
            if len(line) < 3 or not line[0].isdigit():
                raise SetupError("%s:%d: expected 'LAYER NAME MODULE...'" % (path, lineno))
            n = int(line[0])
            names[n] = line[1]
            for m in line[2:]:
                if m in layer_of:
                    raise SetupError("%s:%d: module %s placed twice" % (path, lineno, m))
                layer_of[m] = n
    if not layer_of:
        raise SetupError("%s: empty layer table" % path)
    return layer_of, names


def find_objects(build_dir):
    objs = []
    for t in TARGET_DIRS:
        base = os.path.join(build_dir, "CMakeFiles", t)
        objs += glob.glob(os.path.join(base, "**", "*.o"), recursive=True)
    return sorted(objs)


def module_of(obj):
    """daemon/conn.c.o -> conn; low.o -> low."""
    name = os.path.basename(obj)
    for suffix in (".c.o", ".o", ".obj"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def read_symbols(nm, obj):
    """Returns (defined, undefined) global symbol sets of one object."""
    try:
        res = subprocess.run([nm, "-P", obj], capture_output=True, text=True, timeout=60)
    except OSError as e:
        raise SetupError("cannot run %s: %s" % (nm, e))
    if res.returncode != 0:
        raise SetupError("%s -P %s failed: %s" % (nm, obj, res.stderr.strip()))
    defined, undefined = set(), set()
    for line in res.stdout.splitlines():
        parts = line.split()
        if len(parts) < 2 or parts[0].endswith(":"):
            continue
        sym, kind = parts[0], parts[1]
        if kind in ("U", "w", "v"):
            undefined.add(sym)
        elif kind.isupper():
            defined.add(sym)
    return defined, undefined


def build_graph(nm, objs):
    """Returns (modules, edges): edges is a sorted list of (caller, callee, symbol)."""
    defs, undefs, modules = {}, {}, []
    for obj in objs:
        m = module_of(obj)
        if m in undefs:
            raise SetupError("two objects for module %s (%s)" % (m, obj))
        modules.append(m)
        defined, undefined = read_symbols(nm, obj)
        undefs[m] = undefined
        for s in defined:
            if s in defs and defs[s] != m:
                raise SetupError("%s is defined by both %s and %s" % (s, defs[s], m))
            defs[s] = m
    edges = set()
    for m, undefined in undefs.items():
        for s in undefined:
            callee = defs.get(s)
            if callee is not None and callee != m:
                edges.add((m, callee, s))
    return sorted(modules), sorted(edges)


def cycles(modules, edges):
    """Strongly connected components with more than one module (Tarjan)."""
    succ = {m: sorted({b for a, b, _ in edges if a == m}) for m in modules}
    index, low, on_stack, stack, out = {}, {}, set(), [], []
    counter = [0]

    def visit(root):
        # Iterative, so a deep graph cannot hit Python's recursion limit.
        work = [(root, 0)]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            v, i = work[-1]
            if i < len(succ.get(v, [])):
                work[-1] = (v, i + 1)
                w = succ[v][i]
                if w not in index:
                    index[w] = low[w] = counter[0]
                    counter[0] += 1
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, 0))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))

    for m in modules:
        if m not in index:
            visit(m)
    return sorted(out)


def read_known(path):
    known = set()
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            parts = line.split("#", 1)[0].split()
            if not parts:
                continue
            if len(parts) != 3:
                raise SetupError("%s:%d: expected 'CALLER CALLEE SYMBOL'" % (path, lineno))
            known.add(tuple(parts))
    return known


def direction(layer_of, a, b):
    if layer_of[b] < layer_of[a]:
        return "down"
    return "same" if layer_of[b] == layer_of[a] else "UP"


def run(args, out):
    layer_of, names = read_table(args.table)
    if args.objects:
        # CMake's $<TARGET_OBJECTS:...> arrives as one ';'-separated argument.
        objs = [o for arg in args.objects for o in arg.split(";") if o]
        missing = [o for o in objs if not os.path.exists(o)]
        if missing:
            raise SetupError("missing objects (build first): %s" % " ".join(missing))
    else:
        objs = find_objects(args.build_dir)
    if not objs:
        raise SetupError("no engine objects under %s: build first" % args.build_dir)
    modules, edges = build_graph(args.nm, objs)

    def where(m):
        return "%s (%d %s)" % (m, layer_of[m], names[layer_of[m]])

    unplaced = [m for m in modules if m not in layer_of]
    for m in unplaced:
        print("UNPLACED module %s: add it to %s" % (m, args.table), file=out)
    if unplaced:
        return 1

    if args.list:
        for a, b, s in edges:
            print("%-5s %s -> %s: %s" % (direction(layer_of, a, b), where(a), where(b), s), file=out)
        print("%d modules, %d edges (caller, callee, symbol)" % (len(modules), len(edges)), file=out)
        return 0

    known = read_known(args.known) if args.known else set()
    up = [e for e in edges if direction(layer_of, e[0], e[1]) == "UP"]
    new = [e for e in up if e not in known]
    for a, b, s in up:
        tag = "known" if (a, b, s) in known else "VIOLATION"
        print("%s %s -> %s: %s" % (tag, where(a), where(b), s), file=out)
    for a, b, s in sorted(known - set(edges)):
        print("stale known edge (gone, delete it from %s): %s -> %s: %s"
              % (args.known, a, b, s), file=out)
    comps = cycles(modules, [e for e in edges if e not in known])
    for comp in comps:
        inner = sorted({(a, b) for a, b, _ in edges if a in comp and b in comp})
        print("CYCLE among %s: %s" % (", ".join(comp),
                                      ", ".join("%s->%s" % ab for ab in inner)), file=out)
    pairs = {}
    for a, b, _ in up:
        pairs[(a, b)] = pairs.get((a, b), 0) + 1
    summary = ", ".join("%s->%s %d" % (a, b, n) for (a, b), n in sorted(pairs.items()))
    print("%d modules, %d edges, %d upward (%d not known)%s, %d cycles"
          % (len(modules), len(edges), len(up), len(new),
             ": " + summary if summary else "", len(comps)), file=out)
    return 1 if new or comps else 0


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("build_dir", nargs="?", help="CMake build directory")
    p.add_argument("--objects", nargs="+", help="object files instead of a build tree")
    p.add_argument("--table", default=os.path.join(HERE, "layers.txt"))
    p.add_argument("--known", help="file of known upward edges that do not fail the check")
    p.add_argument("--list", action="store_true", help="print every edge and exit 0")
    p.add_argument("--nm", default=os.environ.get("NM", "nm"))
    args = p.parse_args(argv)
    if not args.build_dir and not args.objects:
        p.error("give a build directory or --objects")
    return args


def main(argv=None):
    args = parse_args(argv)
    try:
        return run(args, sys.stdout)
    except (SetupError, OSError) as e:
        print("layers.py: %s" % e, file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
