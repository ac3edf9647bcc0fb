#!/usr/bin/env python3
"""Counts two habits across the engine's sources (daemon/*.[ch], proto/*.[ch]):

(a) back-pointer chains: an expression that goes on through a pointer field
    labelled `borrowed` whose target owns, directly or through others, the
    struct holding the field (`j->sched->pool`, `c->origin->pool->bufs`);
(b) outside writes: an assignment (`=`, `+=`, ..., `++`, `--`) to a field
    that its struct labels `read-only` or `private`, from a source file of
    another module (a module is a file's basename: daemon/job.c -> job).

How it reads the code (stdlib only, no compiler):
- structs come from `struct NAME { ... }` in the headers and sources, with
  `typedef struct NAME NAME_t`; a field's label is its own comment when that
  starts with public / read-only / private, else the last such section
  comment above it in the struct. A label may name other modules allowed to
  write (`private: the scheduler's and the job module's`, `written by
  conn.c only`).
- ownership: struct T owns U when T embeds a U, or has a pointer to U whose
  comment says owned / owns; a borrowed pointer from S to T is a back-pointer
  when T reaches S by such edges.
- an expression's type starts from the nearest declaration of its first
  name above it (`job_t *j`, `struct conn *c`, a parameter), then follows the
  fields. A chain whose start cannot be typed is counted as unresolved and
  left out, and so is the rest of a chain past a field of a type it does
  not know (a libuv or jansson struct, say).

Writes through a pointer (memcpy, snprintf into a field, `&x->f` passed
on) and casts are not seen. The counts are a measure, not a proof.

Usage: fields.py [--root DIR] [--list] [--known FILE] [--check]
  --check     exit 1 on any outside write not listed in --known
  --list      print every chain and write with its file and line
  --known     "FILE STRUCT.FIELD reason..." per line: tolerated writes
"""
import argparse
import os
import re
import sys

ALIASES = {"scheduler": "sched", "connection": "conn", "daemon": "daemon"}
ACCESS = ("public", "read-only", "private")
WRITE_OPS = r"(?:<<=|>>=|\+=|-=|\*=|/=|%=|&=|\|=|\^=|=(?!=)|\+\+|--)"
IDENT = r"[A-Za-z_]\w*"
# A chain: a name followed by one or more ->field / .field, each optionally
# indexed: s->heap[i]->heap_index.
CHAIN = re.compile(r"(?<![\w.>])(%s)((?:\s*\[[^\[\]]*\])?(?:\s*(?:->|\.)\s*%s(?:\s*\[[^\[\]]*\])?)+)"
                   % (IDENT, IDENT))
STEP = re.compile(r"(->|\.)\s*(%s)" % IDENT)
KEYWORDS = {"return", "sizeof", "if", "while", "for", "switch", "case", "else", "do"}


def strip_code(text):
    """Blanks comments, strings and character literals (keeping newlines and
    offsets), so that regexes see only code."""
    out = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("/*", i):
            j = text.find("*/", i + 2)
            j = n if j < 0 else j + 2
            out.append(re.sub(r"[^\n]", " ", text[i:j]))
            i = j
        elif text.startswith("//", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
            out.append(" " * (j - i))
            i = j
        elif c in "\"'":
            j = i + 1
            while j < n and text[j] != c:
                j += 2 if text[j] == "\\" else 1
            j = min(j + 1, n)
            out.append(c + re.sub(r"[^\n]", " ", text[i + 1:j - 1]) + c if j - i >= 2 else c)
            i = j
        elif c == "#" and (i == 0 or text[i - 1] == "\n"):
            j = text.find("\n", i)
            j = n if j < 0 else j
            out.append(" " * (j - i))  # a preprocessor line: #include <string.h>
            i = j
        else:
            out.append(c)
            i += 1
    return "".join(out)


class Field:
    def __init__(self, struct, name, base, ptr, label, access, module):
        self.struct, self.name, self.base, self.ptr = struct, name, base, ptr
        self.label, self.access, self.module = label, access, module

    def writers(self, modules):
        """Modules allowed to write the field: its own and those its label names."""
        ok = {self.module}
        text = self.label.lower()
        for m in modules:
            if re.search(r"\b%s(\.c\b|'s\b| module\b)" % re.escape(m), text):
                ok.add(m)
        for word, m in ALIASES.items():
            if re.search(r"\b%s('s)?\b" % word, text):
                ok.add(m)
        return ok


def module_of(path):
    return os.path.splitext(os.path.basename(path))[0]


def parse_structs(path, text, structs, typedefs):
    """Adds the structs of one file: structs[name] = {field: Field}."""
    for m in re.finditer(r"typedef\s+struct\s+(%s)\s+(%s)\s*;" % (IDENT, IDENT), text):
        typedefs[m.group(2)] = m.group(1)
    for m in re.finditer(r"(typedef\s+)?struct\s+(%s)\s*\{" % IDENT, text):
        name = m.group(2)
        depth, i = 1, m.end()
        while i < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        body = text[m.end():i - 1]
        if m.group(1):
            t = re.match(r"\s*(%s)\s*;" % IDENT, text[i:])
            if t:
                typedefs[t.group(1)] = name
        structs[name] = parse_fields(name, body, module_of(path))


def parse_fields(sname, body, module):
    fields = {}
    section = ("", None)
    depth = 0
    for raw in body.split("\n"):
        line = raw.strip()
        code, _, comment = line.partition("/*")
        comment = comment.split("*/")[0].strip()
        code = code.strip()
        if depth == 0 and not code and comment:
            word = comment.split(":")[0].split(",")[0].strip().lower()
            if word in ACCESS:
                section = (comment, word)
            continue
        depth += code.count("{") - code.count("}")
        if depth != 0 or not code.endswith(";") or "(" in code:
            continue
        decl = re.sub(r"\[[^\]]*\]", "", code[:-1])
        parts = [p.strip() for p in decl.split(",")]
        first = re.match(r"((?:%s\s+)*?(?:%s))\s*((?:\*\s*)*)(%s)$" % (IDENT, IDENT, IDENT),
                         parts[0])
        if not first:
            continue
        tokens = [t for t in first.group(1).split() if t not in ("const", "struct", "unsigned",
                                                                   "volatile", "enum")]
        base = tokens[-1] if tokens else "int"
        label, access = section
        cword = comment.split(":")[0].split(",")[0].strip().lower()
        if cword in ACCESS:
            label, access = comment, cword
        own_label = comment + " " + label if comment else label
        decls = [(first.group(2), first.group(3))]
        for p in parts[1:]:
            d = re.match(r"((?:\*\s*)*)(%s)$" % IDENT, p)
            if d:
                decls.append((d.group(1), d.group(2)))
        for stars, fname in decls:
            f = Field(sname, fname, base, stars.count("*"), own_label, access, module)
            f.comment = comment
            fields[fname] = f
    return fields


def resolve(t, typedefs):
    return typedefs.get(t, t)


def owns_graph(structs, typedefs):
    edges = {s: set() for s in structs}
    for s, fields in structs.items():
        for f in fields.values():
            target = resolve(f.base, typedefs)
            if target not in structs or target == s:
                continue
            if f.ptr == 0 or re.search(r"\bown(ed|s|ing)?\b", f.comment.lower()):
                edges[s].add(target)
    return edges


def reaches(edges, a, b):
    seen, todo = set(), [a]
    while todo:
        x = todo.pop()
        if x == b:
            return True
        if x in seen:
            continue
        seen.add(x)
        todo.extend(edges.get(x, ()))
    return False


def var_type(code, pos, name, typedefs, structs):
    """The struct type of variable name at pos: its nearest declaration above."""
    pat = re.compile(r"(?:struct\s+(%s)|\b(%s))\s*(?:const\s*)?\**\s*\b%s\b\s*[;=,)\[]"
                     % (IDENT, IDENT, re.escape(name)))
    best = None
    for m in pat.finditer(code, 0, pos):
        t = m.group(1) or m.group(2)
        if t in KEYWORDS:
            continue
        t = resolve(t, typedefs)
        if t in structs:
            best = t
    return best


def walk(chain_start, steps, code, pos, structs, typedefs, by_name):
    """The fields a chain goes through, or None when its start has no type."""
    t = var_type(code, pos, chain_start, typedefs, structs)
    out = []
    if t is None:
        return None
    for _, fname in steps:
        f = structs.get(t, {}).get(fname)
        if f is None:
            return out or None
        out.append(f)
        t = resolve(f.base, typedefs)
    return out


def scan(root):
    paths = []
    for d in ("daemon", "proto"):
        full = os.path.join(root, d)
        if os.path.isdir(full):
            paths += [os.path.join(full, f) for f in sorted(os.listdir(full))
                      if f.endswith((".c", ".h"))]
    texts = {}
    for p in paths:
        with open(p, errors="replace") as fh:
            texts[p] = fh.read()
    structs, typedefs = {}, {}
    for p, t in texts.items():
        parse_structs(p, t, structs, typedefs)
    by_name = {}
    for fields in structs.values():
        for f in fields.values():
            by_name.setdefault(f.name, []).append(f)
    edges = owns_graph(structs, typedefs)
    modules = sorted({module_of(p) for p in paths})
    results = {}
    for p, text in texts.items():
        if not p.endswith(".c"):
            continue
        code = strip_code(text)
        me = module_of(p)
        chains, writes, unresolved = [], [], []
        for m in CHAIN.finditer(code):
            start = m.group(1)
            if start in KEYWORDS:
                continue
            steps = STEP.findall(m.group(2))
            fields = walk(start, steps, code, m.start(), structs, typedefs, by_name)
            line = code.count("\n", 0, m.start()) + 1
            expr = re.sub(r"\s+", "", m.group(0))
            if fields is None:
                unresolved.append((line, expr))
                continue
            for f in fields[:-1]:
                target = resolve(f.base, typedefs)
                if (f.ptr and "borrowed" in f.comment.lower() and target in structs
                        and target != f.struct and reaches(edges, target, f.struct)):
                    chains.append((line, expr, "%s.%s" % (f.struct, f.name)))
                    break
            if len(fields) != len(steps):
                continue
            after = code[m.end():m.end() + 4].lstrip()
            before = code[max(0, m.start() - 3):m.start()].rstrip()
            is_write = re.match(WRITE_OPS, after) or before.endswith(("++", "--"))
            last = fields[-1]
            if (is_write and last.access in ("read-only", "private")
                    and me not in last.writers(modules) and last.module != me):
                writes.append((line, expr, "%s.%s" % (last.struct, last.name), last.access))
        results[p] = (chains, writes, unresolved)
    return results


def read_known(path):
    known = {}
    if not path:
        return known
    with open(path) as fh:
        for raw in fh:
            line = raw.split("#", 1)[0].strip()
            if line:
                parts = line.split(None, 2)
                if len(parts) >= 2:
                    known[(parts[0], parts[1])] = parts[2] if len(parts) > 2 else ""
    return known


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--root", default=os.path.dirname(os.path.dirname(
        os.path.dirname(os.path.abspath(__file__)))), help="the source tree (default: this one)")
    ap.add_argument("--list", action="store_true", help="print every chain and write")
    ap.add_argument("--known", help="file of tolerated writes: FILE STRUCT.FIELD reason")
    ap.add_argument("--unresolved", action="store_true",
                    help="print the chains whose start has no known type")
    ap.add_argument("--check", action="store_true", help="fail on any write not in --known")
    args = ap.parse_args(argv)
    results = scan(args.root)
    known = read_known(args.known)
    total_c = total_w = total_u = 0
    bad = []
    seen_known = set()
    print("%-22s %7s %7s %11s" % ("file", "chains", "writes", "unresolved"))
    for p in sorted(results):
        chains, writes, unresolved = results[p]
        rel = os.path.relpath(p, args.root)
        total_c += len(chains)
        total_w += len(writes)
        total_u += len(unresolved)
        if chains or writes:
            print("%-22s %7d %7d %11d" % (rel, len(chains), len(writes), len(unresolved)))
        if args.unresolved:
            for line, expr in unresolved:
                print("  unresolved %s:%d %s" % (rel, line, expr))
        for line, expr, via in chains:
            if args.list:
                print("  chain %s:%d %s (through %s)" % (rel, line, expr, via))
        for line, expr, field, access in writes:
            key = (rel, field)
            tag = "known" if key in known else "WRITE"
            if key in known:
                seen_known.add(key)
            else:
                bad.append((rel, line, expr, field, access))
            if args.list or tag == "WRITE":
                print("  %s %s:%d %s (%s %s)" % (tag, rel, line, expr, access, field))
    print("%-22s %7d %7d %11d" % ("total", total_c, total_w, total_u))
    for key in sorted(set(known) - seen_known):
        print("stale known write (gone, delete it from %s): %s %s" % (args.known, *key))
    if args.check and bad:
        print("%d write(s) to another module's read-only or private fields" % len(bad))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
