"""Find floating-point sums whose order depends on where arrays lie in memory, in LLVM IR.

With ``reassoc`` (kernels/_jit.py) LLVM vectorizes a loop's sum: lanes are added separately
and combined at the end, an order fixed by the trip count. When the same loop also stores to
memory that might alias what it loads, the vector loop runs only after a runtime check; for
small arrays LLVM checks the pointer *distance* (``diff.check``: the stored array starts less
than VF · UF · size bytes after a loaded one), which also fails for two distinct arrays that
merely lie close together in the heap. The loop then runs scalar and sums in another order:
the bits of the result depend on heap addresses, so they change between calls, runs and
threads. (Checks of the whole ranges, ``found.conflict``, only fail on real overlap; elementwise
loops give the same values on either path.)

:func:`address_dependent_sums` reports, for each function of a module, the runtime-checked
branches whose vector side reduces. It reads LLVM's block and value names (``diff.check``,
``conflict.rdx``, ``bin.rdx``, ``rdx.shuf``, ``vector.reduce``); a test compiles a known
offender to prove it still recognizes them.
"""

import re
from collections import OrderedDict

_LABEL = re.compile(r"^([A-Za-z0-9_.\-]+):")
_BRANCH = re.compile(r"\s*br i1 %(\S+), label %(\S+), label %(\S+)")
_REDUCTION = re.compile(r"bin\.rdx|rdx\.shuf|vector\.reduce\.f(add|mul)")


def _blocks(fn):
    blocks = OrderedDict(entry=[])
    name = "entry"
    for line in fn.splitlines()[1:]:
        m = _LABEL.match(line)
        if m:
            name = m.group(1)
            blocks[name] = []
        else:
            blocks[name].append(line)
    return blocks


def _successors(lines):
    for line in lines:
        s = line.strip()
        if s.startswith(("br ", "switch ")):
            return re.findall(r"label %([A-Za-z0-9_.\-]+)", s)
    return []


def _reach(blocks, start, depth, stop=frozenset()):
    seen, front = set(), [start]
    for _ in range(depth):
        nxt = []
        for b in front:
            if b in seen or b in stop or b not in blocks:
                continue
            seen.add(b)
            nxt += _successors(blocks[b])
        front = nxt
    return seen


def _distance_checked(fn):
    """Names of the i1 values that depend on a ``diff.check`` (through or/and/select)."""
    names = set(re.findall(r"%(diff\.check\S*) = ", fn))
    defs = re.findall(r"%(\S+) = (?:or|and|select) (.*)", fn)
    grew = True
    while grew:
        grew = False
        for name, rhs in defs:
            if name not in names and any(f"%{n}," in rhs + "," or f"%{n} " in rhs + " "
                                         for n in names):
                names.add(name)
                grew = True
    return names


def address_dependent_sums(llvm_ir):
    """``[(function, block)]``: branches on a pointer-distance check whose vector side sums.

    The vector side is followed four blocks deep (check, preheader, body, the block that
    combines the lanes), leaving out blocks the scalar side reaches within seven.
    """
    found = []
    for fn in re.split(r"\n(?=define )", llvm_ir):
        if not fn.startswith("define"):
            continue
        checked = _distance_checked(fn)
        if not checked:
            continue
        name = re.match(r"define [^@]*@(\S+?)\(", fn).group(1)
        blocks = _blocks(fn)
        for label, lines in blocks.items():
            code = [line for line in lines if line.strip()]
            m = _BRANCH.match(code[-1]) if code else None
            if not m or m.group(1) not in checked:
                continue
            scalar = _reach(blocks, m.group(2), 7)
            vector = _reach(blocks, m.group(3), 4, stop=scalar)
            if any(_REDUCTION.search("\n".join(blocks[b])) for b in vector):
                found.append((name, label))
    return found
