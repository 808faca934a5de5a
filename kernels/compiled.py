"""A flattened LightGBM forest compiled to machine code (bit-exact with LightGBM).

:mod:`kernels.forest` walks the forest's arrays; this module instead turns every tree
into straight-line code with its thresholds, children and leaf values as constants
(the approach of lleaves / treelite), compiles it for the host CPU with LLVM
(llvmlite's MCJIT) and calls it from small numba wrappers by address. Same input,
same rules, same summation order: the results are bit-identical to
:mod:`kernels.forest` and to ``Booster.predict`` (decision rules: the
:mod:`kernels.forest` docstring).

Generated code
==============

LLVM IR text (:func:`generate_ir`), one module per forest:

``chunk{c}(ptr x, double acc, ptr k) -> double`` (one ``noinline`` function per
:data:`CHUNK` consecutive trees)
    ``acc`` plus the leaf value the normalised float64 row ``x`` reaches in each of the
    chunk's trees, added one by one in tree order. The features the chunk uses are
    loaded once at its entry and stay in registers (there are 32 with AVX-512) across
    its trees; the trees' code follows one another inline, each ending in a join block
    whose ``phi`` takes the leaf value. The decision of a node: numerical, ``fcmp ule
    x[f], thr`` when the node's default direction is left, else ``fcmp ole`` (``u``:
    NaN compares true, so a NaN takes the default branch in the same single compare;
    after normalisation only ``KIND_NUMERIC_NAN`` / ``KIND_NUMERIC_ZERO`` features can
    be NaN); categorical, left iff ``-1 < x < 32 * W`` (false for NaN, ±inf, ``<= -1``
    and every code past the ``W``-word bitset, so also for ``>= 2**31``) and bit
    ``int(x)`` (``fptosi``, truncation toward zero as LightGBM's ``static_cast<int>``,
    clamped to 0 outside that range, where it would be poison) of the set: a 64-bit
    immediate for ``W <= 2``, else a constant ``[W x i32]`` global; no branch either
    way. A subtree of at most :data:`FLAT_HEIGHT` levels and :data:`FLAT_NODES`
    decision nodes is computed without branches (every node's decision, then
    ``select`` of the leaf values up to its root): the bottom of a tree is where
    branches mispredict, and evaluating both sides costs less than a misprediction.
    Above that, one basic block and one conditional branch per node; a leaf child
    branches straight to the join. A one-leaf tree adds its constant. Thresholds and
    the leaf values of branch-free subtrees are read from the chunk's constant table
    ``@k{c}``, passed as the argument ``k``: each is then a memory operand at an offset
    from one register (``vucomisd 8*i(%reg)``), where a constant-pool literal costs a
    64-bit address load first under the JIT's large code model (a third of the
    instructions before; +10 % rows/s on 500 x 63, +4 % on 100 x 31).
``predict_row(ptr X) -> double``
    normalises row 0 of the float32 ``X`` into a stack buffer (each feature's
    ``KIND_*`` baked in: ``|v| <= 1e-35f`` -> 0, or NaN on ``KIND_NUMERIC_ZERO``;
    ``±inf`` clamped to ±1e300 as LightGBM's ``AvoidInf``; NaN -> 0 on
    ``KIND_NUMERIC``, exactly ``kernels.forest._normalise``), calls ``chunk0``,
    ``chunk1``, ... threading a float64 accumulator from 0.0 through them (tree order,
    the order of LightGBM's sum), then ``raw / divisor`` (left out when 1) and the
    transform (identity, ``exp``, ``1 / (1 + exp(-param * raw))``, ``sign * raw**2``).
``predict(ptr X, i64 n, ptr out)``
    rows in blocks of :func:`block_rows` rows (256 up to 64 features; the block's
    normalised rows live on the stack, at most 128 kB): normalise the block, then
    ``chunk0`` for every row of the block, then ``chunk1`` ... (the rows' walks are
    independent, so the CPU overlaps them; the chunk's code stays hot over the block),
    each row's accumulator kept in a block array; then divisor and transform into
    ``out``.

Measured in one process, rows/s at 100k rows on one thread, 100 x 31 / 500 x 63 leaves
(``bench/models.py``): one ``noinline`` function per tree with only leaf pairs as
``select`` 822k / 232k; branch-free subtrees 1.23M / 291k; the chunk functions with
features in registers 1.43M / 300k; constants from a table 1.49M / 326k (lleaves 1.11M /
327k on the same rows). Chunks of 8
or 32 trees and flat limits 4/15 .. 7/24 measured the same or lower.

The IR goes to the code generator at ``-O3`` for the host CPU and features with no IR
pass pipeline: the code is emitted already in the shape wanted; in the prototype,
running the IR passes (even on the two drivers only) cost 13-24 s more on 500 x 63-leaf
trees (3-4x the compile) for at most ~8% faster code, and inlining every tree into its
chunk with LLVM's inliner cost 10x the compile for no gain.

Calls
=====

The MCJIT functions are called from numba (``@njit(nogil=True)``) wrappers through an
``@intrinsic`` that calls a function pointer (cheaper than ctypes, and callable from
other numba code): :func:`call_batch`, :func:`call_row`, :func:`call_rows3` (three
forests on one row in one dispatch: a model version's ETA and quantiles) and
:func:`call_parallel` (``prange`` over row blocks, each calling ``predict`` on its
block: the GIL is never held). The wrappers do no bounds checks: :class:`CompiledForest`
checks its inputs; callers of the wrappers must pass a C-contiguous float32
``X[n, n_features]`` of the forest the address belongs to (typing refuses any
other dtype or layout) and a float64 ``out[n]``, and keep the :class:`CompiledForest`
alive while they call its addresses.

Object cache
============

Compiling costs ~0.25 s per 1,000 tree nodes on this machine (0.7 s for 100 x 31
leaves, 7.6 s for 500 x 63 leaves); loading cached object code takes milliseconds.
:func:`compile_forest` takes an :class:`ObjectCache` (get / put bytes by key) and
stores the object code under a key that is the sha256 of the forest's arrays and
scalars, :data:`GENERATOR_VERSION`, the block size, the optimisation level, the
llvmlite version and the host CPU's name and feature string: a cached load needs
neither code generation nor IR. This module does no file I/O and no logging (the
``kernels`` rule): ``server.objcache.FileObjectCache`` keeps the object code in files
(``$INTELLILOG_CACHE_DIR``, else ``~/.cache/intellilog/compiled``), written atomically
and checked by hash before use; a cache that cannot store only costs a compile per
process, and the note says so.

Bump :data:`GENERATOR_VERSION` whenever the generated code changes.
"""

from __future__ import annotations

import hashlib
import struct
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from llvmlite import ir as llir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from kernels.forest import (
    BLOCK,
    FLAG_CATEGORICAL,
    FLAG_DEFAULT_LEFT,
    KIND_CATEGORICAL,
    KIND_NUMERIC,
    KIND_NUMERIC_ZERO,
    TRANSFORM_EXP,
    TRANSFORM_IDENTITY,
    TRANSFORM_SIGMOID,
    TRANSFORM_SQUARE,
    predict_forest,
    predict_forest_row,
)

__all__ = [
    "GENERATOR_VERSION",
    "CompiledForest",
    "ObjectCache",
    "block_rows",
    "call_batch",
    "call_parallel",
    "call_row",
    "call_rows3",
    "compare_with_kernel",
    "compile_forest",
    "edge_rows",
    "generate_ir",
]

#: Version of the generated code: part of the cache key (bump on any change).
GENERATOR_VERSION = 6
#: Code generator optimisation level.
OPT_LEVEL = 3
#: Normalised doubles one batch block may hold on the stack (128 kB).
_SCRATCH_DOUBLES = 16384

_ZERO = float(np.float32(1e-35))  # LightGBM's kZeroThreshold (a float), as in kernels.forest
_HUGE = 1e300  # LightGBM's AvoidInf bound
_INT_LIMIT = 2147483648.0
_NAN_BITS = "0x7FF8000000000000"

_LOCK = threading.Lock()  # LLVM target set-up and JIT creation, one at a time
_llvm_ready = False


def block_rows(n_features: int) -> int:
    """Rows per batch block: 256 (:data:`kernels.forest.BLOCK`), fewer (a power of two,
    at least 8) when the block's normalised rows would pass 128 kB of stack."""
    b = BLOCK
    while b > 8 and b * max(1, n_features) > _SCRATCH_DOUBLES:
        b //= 2
    return b


# ------------------------------------------------------------------------ the forest


@dataclass(frozen=True, slots=True)
class _Model:
    """The forest as plain Python values, for the emitters."""

    thr: list[float]
    feat: list[int]
    left: list[int]
    right: list[int]
    flags: list[int]
    cat_sets: list[list[int]]  # set s -> its uint32 words
    roots: list[int]
    leaf: list[float]
    kinds: list[int]
    divisor: float
    transform: int
    transform_param: float

    @property
    def n_features(self) -> int:
        return len(self.kinds)


def _args(forest: Any) -> tuple[Any, ...]:
    """The kernel arguments (``Forest.args()`` order) of a ``Forest`` or of such a tuple."""
    args = tuple(forest.args()) if hasattr(forest, "args") else tuple(forest)
    if len(args) != 9:
        raise TypeError("expected a training.export.Forest or its .args() tuple (9 items)")
    return args


def _model(args: Sequence[Any]) -> _Model:
    nodes, cat_bounds, cat_bits, roots, leaf_value, divisor, transform, tparam, kinds = args
    cb = np.asarray(cat_bounds).tolist()
    bits = np.asarray(cat_bits).tolist()
    return _Model(
        thr=nodes["threshold"].tolist(),
        feat=nodes["feature"].tolist(),
        left=nodes["left"].tolist(),
        right=nodes["right"].tolist(),
        flags=nodes["flags"].tolist(),
        cat_sets=[bits[cb[s] : cb[s + 1]] for s in range(len(cb) - 1)],
        roots=np.asarray(roots).tolist(),
        leaf=np.asarray(leaf_value).tolist(),
        kinds=np.asarray(kinds).tolist(),
        divisor=float(divisor),
        transform=int(transform),
        transform_param=float(tparam),
    )


def _cache_key(
    args: Sequence[Any], block: int, cpu: str, features: str, flat: tuple[int, int]
) -> str:
    """sha256 of what the object code depends on (no IR needed)."""
    import llvmlite

    nodes, cat_bounds, cat_bits, roots, leaf_value, divisor, transform, tparam, kinds = args
    h = hashlib.sha256()
    head = f"gen={GENERATOR_VERSION};llvmlite={llvmlite.__version__};opt={OPT_LEVEL};"
    h.update(f"{head}block={block};chunk={CHUNK};flat={flat[0]},{flat[1]};".encode())
    h.update(f"cpu={cpu};features={features};".encode())
    h.update(struct.pack("<ddq", float(divisor), float(tparam), int(transform)))
    # node fields one by one: the aligned record's padding bytes are not initialised
    for name, arr, dt in (
        ("threshold", nodes["threshold"], np.float64),
        ("feature", nodes["feature"], np.int32),
        ("left", nodes["left"], np.int32),
        ("right", nodes["right"], np.int32),
        ("flags", nodes["flags"], np.uint8),
        ("cat_bounds", cat_bounds, np.int32),
        ("cat_bits", cat_bits, np.uint32),
        ("roots", roots, np.int32),
        ("leaf_value", leaf_value, np.float64),
        ("kinds", kinds, np.uint8),
    ):
        a = np.ascontiguousarray(arr, dtype=dt)
        h.update(f"{name}:{a.dtype.str}:{a.shape[0]};".encode())
        h.update(a.tobytes())
    return h.hexdigest()


# ------------------------------------------------------------------------ IR emitters


def _d(x: float) -> str:
    """An exact LLVM double literal."""
    return "0x{:016X}".format(struct.unpack("<Q", struct.pack("<d", x))[0])


class _IR:
    def __init__(self, start: int = 0) -> None:
        self.lines: list[str] = []
        self.n = start

    def tmp(self) -> str:
        self.n += 1
        return f"%t{self.n}"

    def lab(self) -> str:
        self.n += 1
        return f"b{self.n}"

    def __call__(self, s: str) -> None:
        self.lines.append(s)


#: Trees per chunk: one ``chunk{c}`` function holds the code of this many consecutive
#: trees (the row's features loaded once, in registers across them); the batch loop runs
#: a chunk for every row of a block, chunk after chunk, so the chunk's code stays hot.
CHUNK = 16

#: A subtree of at most this height and this many decision nodes is evaluated without
#: branches: every node's compare, then ``select``s up to the subtree's root. Its lower
#: levels are the least predictable branches; computing both sides there is cheaper than
#: a misprediction (measured, 100 x 31 / 500 x 63: height 1 = leaf pairs only 822k /
#: 232k rows/s; these limits 1.23M / 291k).
FLAT_HEIGHT = 6
FLAT_NODES = 15


def _tree_shape(m: _Model, root: int) -> tuple[list[int], dict[int, int], dict[int, int]]:
    """(the tree's decision nodes in pre-order, height and decision-node count of each)."""
    order, stack = [], [root]
    while stack:
        k = stack.pop()
        order.append(k)
        stack.extend(c for c in (m.right[k], m.left[k]) if c >= 0)
    height: dict[int, int] = {}
    size: dict[int, int] = {}
    for k in reversed(order):  # children before parents
        kids = [c for c in (m.left[k], m.right[k]) if c >= 0]
        height[k] = 1 + max((height[c] for c in kids), default=0)
        size[k] = 1 + sum(size[c] for c in kids)
    return order, height, size


def _emit_chunk(
    m: _Model,
    c: int,
    trees: Sequence[int],
    out: list[str],
    globals_: list[str],
    flat: tuple[int, int],
) -> None:
    """``define internal fastcc double @chunk{c}(ptr %x, double %acc, ptr %k)``: ``acc``
    plus the leaf values the normalised row ``x`` reaches in ``trees``, added one by one in
    order; ``k`` is the chunk's constant table ``@k{c}``."""
    e = _IR()
    used: set[int] = set()
    consts: dict[str, int] = {}  # by exact literal: -0.0 and 0.0 stay apart

    def const(x: float) -> str:
        """``x`` loaded from the chunk's constant table ``%k`` (module docstring)."""
        i = consts.setdefault(_d(x), len(consts))
        p, r = e.tmp(), e.tmp()
        e(f"  {p} = getelementptr inbounds double, ptr %k, i64 {i}")
        e(f"  {r} = load double, ptr {p}, align 8")
        return r

    def cond(k: int) -> str:
        """An i1 that is true when row ``x`` goes left at node ``k`` (no branch)."""
        f = m.feat[k]
        used.add(f)
        v = f"%f{f}"
        if not m.flags[k] & FLAG_CATEGORICAL:
            # ule: NaN compares true (goes left, the default); ole: NaN goes right
            op = "ule" if m.flags[k] & FLAG_DEFAULT_LEFT else "ole"
            r = e.tmp()
            e(f"  {r} = fcmp {op} double {v}, {const(m.thr[k])}")
            return r
        words = m.cat_sets[int(m.thr[k])]
        W = len(words)
        if W == 0:  # empty set: everything goes right
            return "false"
        # left iff -1 < v < 32 W (false for NaN and inf) and bit int(v) of the set; the
        # code is clamped to 0 outside that range (fptosi is poison there)
        a, b, inr, ci, cs, sh, bit, r = (e.tmp() for _ in range(8))
        e(f"  {a} = fcmp ogt double {v}, {_d(-1.0)}")
        e(f"  {b} = fcmp olt double {v}, {_d(min(32.0 * W, _INT_LIMIT))}")
        e(f"  {inr} = and i1 {a}, {b}")
        e(f"  {ci} = fptosi double {v} to i64")
        e(f"  {cs} = select i1 {inr}, i64 {ci}, i64 0")
        if W <= 2:
            mask = words[0] | ((words[1] << 32) if W == 2 else 0)
            if mask >= 1 << 63:  # as a signed i64 literal
                mask -= 1 << 64
            e(f"  {sh} = lshr i64 {mask}, {cs}")
            e(f"  {bit} = trunc i64 {sh} to i1")
        else:
            g = f"@cat{k}"
            globals_.append(
                f"{g} = internal unnamed_addr constant [{W} x i32] ["
                + ", ".join(f"i32 {w if w < 1 << 31 else w - (1 << 32)}" for w in words)
                + "], align 4"
            )
            wi, wp, w, lo, s5 = (e.tmp() for _ in range(5))
            e(f"  {wi} = lshr i64 {cs}, 5")
            e(f"  {wp} = getelementptr inbounds [{W} x i32], ptr {g}, i64 0, i64 {wi}")
            e(f"  {w} = load i32, ptr {wp}, align 4")
            e(f"  {lo} = and i64 {cs}, 31")
            e(f"  {s5} = trunc i64 {lo} to i32")
            e(f"  {sh} = lshr i32 {w}, {s5}")
            e(f"  {bit} = trunc i32 {sh} to i1")
        e(f"  {r} = and i1 {inr}, {bit}")
        return r

    def value(k: int) -> str:
        """The leaf value of the flat subtree at ``k`` (or leaf ``~k``), without branches."""
        if k < 0:
            return const(m.leaf[~k])
        c_, lv, rv, r = cond(k), value(m.left[k]), value(m.right[k]), e.tmp()
        e(f"  {r} = select i1 {c_}, double {lv}, double {rv}")
        return r

    acc = "%acc"
    for t in trees:
        root = m.roots[t]
        if root < 0:  # a one-leaf tree
            a2 = e.tmp()
            e(f"  {a2} = fadd double {acc}, {_d(m.leaf[~root])}")
            acc = a2
            continue
        order, height, size = _tree_shape(m, root)
        flat_nodes = {k for k in order if height[k] <= flat[0] and size[k] <= flat[1]}

        if root in flat_nodes:
            val = value(root)
        else:
            join = f"d{t}"
            incoming: list[tuple[str, str]] = []
            e(f"  br label %n{root}")
            for k in order:  # the branching part; a flat child right after its parent
                if k in flat_nodes:
                    continue
                e(f"n{k}:")  # one block per branching node
                c_ = cond(k)
                tgt = []
                for ch in (m.left[k], m.right[k]):
                    if ch < 0:  # a leaf: straight to the join
                        incoming.append((_d(m.leaf[~ch]), f"n{k}"))
                        tgt.append(f"%{join}")
                    else:
                        tgt.append(f"%n{ch}")
                e(f"  br i1 {c_}, label {tgt[0]}, label {tgt[1]}")
                for ch in (m.left[k], m.right[k]):
                    if ch in flat_nodes:  # one block: its selects, then to the join
                        e(f"n{ch}:")
                        incoming.append((value(ch), f"n{ch}"))
                        e(f"  br label %{join}")
            e(f"{join}:")
            val = e.tmp()
            e(f"  {val} = phi double " + ", ".join(f"[{v}, %{b}]" for v, b in incoming))
        a2 = e.tmp()
        e(f"  {a2} = fadd double {acc}, {val}")
        acc = a2
    e(f"  ret double {acc}")

    table = list(consts) or [_d(0.0)]
    globals_.append(
        f"@k{c} = internal unnamed_addr constant [{len(table)} x double] ["
        + ", ".join(f"double {x}" for x in table)
        + "], align 8"
    )
    out.append(
        f"define internal fastcc double @chunk{c}(ptr noalias nocapture readonly %x, "
        "double %acc, ptr noalias nocapture readonly %k) noinline {"
    )
    out.append("entry:")
    for f in sorted(used):
        out.append(f"  %p{f} = getelementptr inbounds double, ptr %x, i64 {f}")
        out.append(f"  %f{f} = load double, ptr %p{f}, align 8")
    out.extend(e.lines)
    out.append("}")


def _emit_normalise(m: _Model, e: _IR, src: str, dst: str) -> None:
    """The ``F`` floats at ``src`` into the ``F`` doubles at ``dst``, with the rules of
    ``kernels.forest._normalise`` for each feature's kind."""
    for f, k in enumerate(m.kinds):
        ps, x32, v, pd = e.tmp(), e.tmp(), e.tmp(), e.tmp()
        e(f"  {ps} = getelementptr inbounds float, ptr {src}, i64 {f}")
        e(f"  {x32} = load float, ptr {ps}, align 4")
        e(f"  {v} = fpext float {x32} to double")
        res = v
        if k != KIND_CATEGORICAL:  # categorical values are used as they are
            ab, small, v1, big, v2, neg, v3 = (e.tmp() for _ in range(7))
            e(f"  {ab} = call double @llvm.fabs.f64(double {v})")
            e(f"  {small} = fcmp ole double {ab}, {_d(_ZERO)}")  # false for NaN
            zero = _NAN_BITS if k == KIND_NUMERIC_ZERO else _d(0.0)
            e(f"  {v1} = select i1 {small}, double {zero}, double {v}")
            e(f"  {big} = fcmp ogt double {v1}, {_d(_HUGE)}")
            e(f"  {v2} = select i1 {big}, double {_d(_HUGE)}, double {v1}")
            e(f"  {neg} = fcmp olt double {v2}, {_d(-_HUGE)}")
            e(f"  {v3} = select i1 {neg}, double {_d(-_HUGE)}, double {v2}")
            res = v3
            if k == KIND_NUMERIC:  # missing type None: NaN is compared as 0
                isn, v4 = e.tmp(), e.tmp()
                e(f"  {isn} = fcmp uno double {v}, 0.0")
                e(f"  {v4} = select i1 {isn}, double {_d(0.0)}, double {v3}")
                res = v4
        e(f"  {pd} = getelementptr inbounds double, ptr {dst}, i64 {f}")
        e(f"  store double {res}, ptr {pd}, align 8")


def _emit_finish(m: _Model, e: _IR, raw: str) -> str:
    """``transform(raw / divisor)``; returns the value's name."""
    r = raw
    if m.divisor != 1.0:  # x / 1.0 == x exactly: left out
        r2 = e.tmp()
        e(f"  {r2} = fdiv double {r}, {_d(m.divisor)}")
        r = r2
    if m.transform == TRANSFORM_EXP:
        o = e.tmp()
        e(f"  {o} = call double @llvm.exp.f64(double {r})")
        return o
    if m.transform == TRANSFORM_SIGMOID:
        a, b, c, o = e.tmp(), e.tmp(), e.tmp(), e.tmp()
        e(f"  {a} = fmul double {_d(-m.transform_param)}, {r}")
        e(f"  {b} = call double @llvm.exp.f64(double {a})")
        e(f"  {c} = fadd double {_d(1.0)}, {b}")
        e(f"  {o} = fdiv double {_d(1.0)}, {c}")
        return o
    if m.transform == TRANSFORM_SQUARE:
        sq, ng, ge, o = e.tmp(), e.tmp(), e.tmp(), e.tmp()
        e(f"  {sq} = fmul double {r}, {r}")
        e(f"  {ng} = fneg double {sq}")
        e(f"  {ge} = fcmp oge double {r}, 0.0")
        e(f"  {o} = select i1 {ge}, double {sq}, double {ng}")
        return o
    if m.transform != TRANSFORM_IDENTITY:
        raise ValueError(f"unknown transform {m.transform}")
    return r


def generate_ir(
    forest: Any, block: int | None = None, flat: tuple[int, int] = (FLAT_HEIGHT, FLAT_NODES)
) -> str:
    """LLVM IR of ``predict(ptr X, i64 n, ptr out)`` and ``predict_row(ptr X) -> double``
    for a ``Forest`` (or its ``args()`` tuple); ``block`` defaults to :func:`block_rows`;
    ``flat``: the (height, decision nodes) limits of branch-free subtrees, each >= 1."""
    m = _model(_args(forest))
    F, T = m.n_features, len(m.roots)
    B = block_rows(F) if block is None else int(block)
    if min(flat) < 1:
        raise ValueError(f"flat limits must be >= 1, got {flat}")
    code: list[str] = []
    globals_: list[str] = []
    chunks = [list(range(a, min(T, a + CHUNK))) for a in range(0, T, CHUNK)]
    for ci, chunk in enumerate(chunks):
        _emit_chunk(m, ci, chunk, code, globals_, flat)

    # ---- one row
    e = _IR(start=10**7)
    e("define double @predict_row(ptr noalias nocapture readonly %X) {")
    e("entry:")
    e(f"  %xn = alloca [{F} x double], align 16")
    _emit_normalise(m, e, "%X", "%xn")
    acc = _d(0.0)
    for ci in range(len(chunks)):
        a2 = e.tmp()
        e(f"  {a2} = call fastcc double @chunk{ci}(ptr %xn, double {acc}, ptr @k{ci})")
        acc = a2
    e(f"  ret double {_emit_finish(m, e, acc)}")
    e("}")

    # ---- batch: blocks of B rows; inside a block, chunks of CHUNK trees row by row
    e(
        "define void @predict(ptr noalias nocapture readonly %X, i64 %n, ptr noalias nocapture %out) {"
    )
    e("entry:")
    e(f"  %xn = alloca [{B * F} x double], align 16")
    e(f"  %acc = alloca [{B} x double], align 16")
    e("  br label %outer")
    e("outer:")
    e("  %start = phi i64 [0, %entry], [%next, %fin_end]")
    e("  %more = icmp slt i64 %start, %n")
    e("  br i1 %more, label %body, label %exit")
    e("body:")
    e("  %rem = sub i64 %n, %start")
    e(f"  %lt = icmp slt i64 %rem, {B}")
    e(f"  %m = select i1 %lt, i64 %rem, i64 {B}")
    e("  br label %norm")
    e("norm:")
    e("  %j0 = phi i64 [0, %body], [%j0n, %norm]")
    e("  %row = add i64 %start, %j0")
    e(f"  %xoff = mul i64 %row, {F}")
    e("  %src = getelementptr inbounds float, ptr %X, i64 %xoff")
    e(f"  %doff = mul i64 %j0, {F}")
    e("  %dst = getelementptr inbounds double, ptr %xn, i64 %doff")
    _emit_normalise(m, e, "%src", "%dst")
    e("  %pa0 = getelementptr inbounds double, ptr %acc, i64 %j0")
    e("  store double 0.0, ptr %pa0, align 8")
    e("  %j0n = add i64 %j0, 1")
    e("  %c0 = icmp slt i64 %j0n, %m")
    e("  br i1 %c0, label %norm, label %ch0")
    prev = "norm"
    for ci in range(len(chunks)):
        lab, nxt = f"ch{ci}", (f"ch{ci + 1}" if ci + 1 < len(chunks) else "fin")
        j, jn, off, px, pa, a, a2, c = (e.tmp() for _ in range(8))
        e(f"{lab}:")
        e(f"  {j} = phi i64 [0, %{prev}], [{jn}, %{lab}]")
        e(f"  {off} = mul i64 {j}, {F}")
        e(f"  {px} = getelementptr inbounds double, ptr %xn, i64 {off}")
        e(f"  {pa} = getelementptr inbounds double, ptr %acc, i64 {j}")
        e(f"  {a} = load double, ptr {pa}, align 8")
        e(f"  {a2} = call fastcc double @chunk{ci}(ptr {px}, double {a}, ptr @k{ci})")
        e(f"  store double {a2}, ptr {pa}, align 8")
        e(f"  {jn} = add i64 {j}, 1")
        e(f"  {c} = icmp slt i64 {jn}, %m")
        e(f"  br i1 {c}, label %{lab}, label %{nxt}")
        prev = lab
    e("fin:")
    e(f"  %jf = phi i64 [0, %{prev}], [%jfn, %fin]")
    e("  %paf = getelementptr inbounds double, ptr %acc, i64 %jf")
    e("  %raw = load double, ptr %paf, align 8")
    res = _emit_finish(m, e, "%raw")
    e("  %orow = add i64 %start, %jf")
    e("  %po = getelementptr inbounds double, ptr %out, i64 %orow")
    e(f"  store double {res}, ptr %po, align 8")
    e("  %jfn = add i64 %jf, 1")
    e("  %cf = icmp slt i64 %jfn, %m")
    e("  br i1 %cf, label %fin, label %fin_end")
    e("fin_end:")
    e(f"  %next = add i64 %start, {B}")
    e("  br label %outer")
    e("exit:")
    e("  ret void")
    e("}")

    head = ["declare double @llvm.fabs.f64(double)", "declare double @llvm.exp.f64(double)"]
    return "\n".join(head + globals_ + code + e.lines) + "\n"


# ------------------------------------------------------------------------ numba callers

_I8P = llir.IntType(8).as_pointer()


def _is_matrix(t: Any) -> bool:
    return (
        isinstance(t, types.Array) and t.ndim == 2 and t.dtype == types.float32 and t.layout == "C"
    )


def _is_vector(t: Any) -> bool:
    return (
        isinstance(t, types.Array) and t.ndim == 1 and t.dtype == types.float64 and t.layout == "C"
    )


def _row_typer(typingctx: Any, addr: Any, X: Any) -> Any:
    """``predict_row`` at ``addr`` on row 0 of ``X``."""
    if not (isinstance(addr, types.Integer) and _is_matrix(X)):
        return None

    def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
        arr = cgutils.create_struct_proxy(sig.args[1])(context, builder, value=args[1])
        fnty = llir.FunctionType(llir.DoubleType(), [_I8P])
        fn = builder.inttoptr(args[0], fnty.as_pointer())
        return builder.call(fn, [builder.bitcast(arr.data, _I8P)])

    return types.float64(addr, X), codegen


def _batch_typer(typingctx: Any, addr: Any, X: Any, start: Any, m: Any, out: Any) -> Any:
    """``predict`` at ``addr`` on rows ``start:start + m`` of ``X`` into ``out[start:]``."""
    ok = (
        isinstance(addr, types.Integer)
        and _is_matrix(X)
        and isinstance(start, types.Integer)
        and isinstance(m, types.Integer)
        and _is_vector(out)
    )
    if not ok:
        return None

    def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
        a = cgutils.create_struct_proxy(sig.args[1])(context, builder, value=args[1])
        o = cgutils.create_struct_proxy(sig.args[4])(context, builder, value=args[4])
        i64 = llir.IntType(64)
        s = context.cast(builder, args[2], sig.args[2], types.int64)
        n = context.cast(builder, args[3], sig.args[3], types.int64)
        cols = context.cast(builder, builder.extract_value(a.shape, 1), types.intp, types.int64)
        xp = builder.gep(a.data, [builder.mul(s, cols)], inbounds=True)
        op = builder.gep(o.data, [s], inbounds=True)
        fnty = llir.FunctionType(llir.VoidType(), [_I8P, i64, _I8P])
        fn = builder.inttoptr(args[0], fnty.as_pointer())
        builder.call(fn, [builder.bitcast(xp, _I8P), n, builder.bitcast(op, _I8P)])
        return context.get_dummy_value()

    return types.none(addr, X, start, m, out), codegen


# numba intrinsics (typed Any: their Python-level signature is not the call's)
_row_fn: Any = intrinsic(_row_typer)
_batch_fn: Any = intrinsic(_batch_typer)


@njit(cache=True, nogil=True)
def call_row(addr: int, X: np.ndarray) -> float:
    """The compiled ``predict_row`` at ``addr`` on row 0 of ``X`` (no checks)."""
    return _row_fn(addr, X)


@njit(cache=True, nogil=True)
def call_rows3(a0: int, a1: int, a2: int, X: np.ndarray) -> tuple[float, float, float]:
    """Three compiled ``predict_row`` functions on row 0 of ``X``, in one dispatch."""
    return _row_fn(a0, X), _row_fn(a1, X), _row_fn(a2, X)


@njit(cache=True, nogil=True)
def call_batch(addr: int, X: np.ndarray, out: np.ndarray) -> None:
    """The compiled ``predict`` at ``addr``: every row of ``X`` into ``out`` (no checks)."""
    _batch_fn(addr, X, 0, X.shape[0], out)


@njit(cache=True, nogil=True, parallel=True)
def call_parallel(addr: int, X: np.ndarray, out: np.ndarray, block: int) -> None:
    """:func:`call_batch` with the ``block``-row blocks spread over numba's threads."""
    n = X.shape[0]
    for b in prange((n + block - 1) // block):
        start = b * block
        _batch_fn(addr, X, start, min(block, n - start), out)


# ------------------------------------------------------------------------ compiling


def _target_machine() -> tuple[Any, str, str]:
    """(target machine for the host CPU, CPU name, feature string)."""
    import llvmlite.binding as llvm

    global _llvm_ready
    if not _llvm_ready:
        llvm.initialize_native_target()
        llvm.initialize_native_asmprinter()
        _llvm_ready = True
    cpu = llvm.get_host_cpu_name()
    try:
        features = llvm.get_host_cpu_features().flatten()
    except RuntimeError:  # not available on every platform
        features = ""
    tm = llvm.Target.from_default_triple().create_target_machine(
        cpu=cpu, features=features, opt=OPT_LEVEL, codemodel="jitdefault"
    )
    return tm, cpu, features


class CompiledForest:
    """A forest compiled to machine code (:func:`compile_forest`); owns the JIT engine
    (the code lives as long as this object).

    ``info``: ``cached`` (loaded from the object cache), ``seconds`` (compile or load
    time, including the cache lookup), ``cache_path`` (None when not cached) and
    ``note`` (one line: what happened).
    """

    def __init__(self, engine: Any, n_features: int, block: int, info: dict[str, Any]) -> None:
        self._engine = engine
        self.n_features = n_features
        self.block = block
        self.info = info
        self.batch_addr: int = engine.get_function_address("predict")
        self.row_addr: int = engine.get_function_address("predict_row")
        if not (self.batch_addr and self.row_addr):
            raise RuntimeError("compiled forest lacks its entry points")

    def _check(self, X: np.ndarray, min_rows: int = 0) -> None:
        if not (
            isinstance(X, np.ndarray)
            and X.dtype == np.float32
            and X.ndim == 2
            and X.flags.c_contiguous
            and X.shape[1] == self.n_features
            and X.shape[0] >= min_rows
        ):
            raise ValueError(
                f"expected a C-contiguous float32 [n, {self.n_features}] matrix, got "
                f"{getattr(X, 'dtype', type(X))} {getattr(X, 'shape', '')}"
            )

    def _check_out(self, X: np.ndarray, out: np.ndarray) -> None:
        self._check(X)
        if not (
            isinstance(out, np.ndarray)
            and out.dtype == np.float64
            and out.ndim == 1
            and out.flags.c_contiguous
            and out.shape[0] == X.shape[0]
        ):
            raise ValueError(f"out must be a C-contiguous float64 [{X.shape[0]}] array")

    def predict(self, X: np.ndarray, out: np.ndarray) -> None:
        """Fill ``out[n]`` (float64) with the predictions of ``X[n, F]`` (float32,
        C-contiguous), one thread, GIL released."""
        self._check_out(X, out)
        call_batch(self.batch_addr, X, out)

    def predict_parallel(self, X: np.ndarray, out: np.ndarray, threads: int) -> None:
        """:meth:`predict` on ``threads`` numba threads (row blocks; identical results).
        Sets numba's thread count for the calling thread; numba's workqueue threading
        layer allows one parallel launch at a time per process: callers serialise."""
        import numba

        self._check_out(X, out)
        limit = int(getattr(numba.config, "NUMBA_NUM_THREADS", 1))
        numba.set_num_threads(max(1, min(int(threads), limit)))
        call_parallel(self.batch_addr, X, out, self.block)

    def predict_row(self, X: np.ndarray) -> float:
        """The prediction of row 0 of ``X[>=1, F]`` (float32, C-contiguous)."""
        self._check(X, min_rows=1)
        return call_row(self.row_addr, X)


class ObjectCache(Protocol):
    """Where compiled object code is kept between processes (``server.objcache`` has the
    file-backed one): ``get`` returns the bytes stored under ``key`` or None; ``put``
    stores them and returns None, or a one-line reason it could not; ``where`` names
    the place (for notes)."""

    def get(self, key: str) -> bytes | None: ...

    def put(self, key: str, obj: bytes) -> str | None: ...

    def where(self, key: str) -> str: ...


def compile_forest(
    forest: Any,
    cache: ObjectCache | None = None,
    flat: tuple[int, int] = (FLAT_HEIGHT, FLAT_NODES),
) -> CompiledForest:
    """Compile a ``training.export.Forest`` (or its ``args()`` tuple), or load its
    object code from ``cache`` under :func:`cache_key` (module docstring); ``cache``
    None compiles in memory only; ``flat``: as for :func:`generate_ir`.

    The forest must be valid (``Forest.validate``): like the :mod:`kernels.forest`
    kernels, the code does no bounds checks.
    """
    import llvmlite.binding as llvm

    t0 = time.perf_counter()
    args = _args(forest)
    n_features = int(np.asarray(args[8]).shape[0])
    block = block_rows(n_features)
    with _LOCK:
        tm, cpu, features = _target_machine()
        key = _cache_key(args, block, cpu, features, flat)
        if cache is not None:
            obj = cache.get(key)
            if obj is not None:
                engine = llvm.create_mcjit_compiler(llvm.parse_assembly(""), tm)
                engine.add_object_file(llvm.ObjectFileRef.from_data(obj))
                engine.finalize_object()
                dt = time.perf_counter() - t0
                info = {"cached": True, "seconds": dt, "cache_path": cache.where(key),
                        "note": f"loaded from cache in {dt:.3f} s"}  # fmt: skip
                return CompiledForest(engine, n_features, block, info)

        ir = generate_ir(args, block, flat)
        mod = llvm.parse_assembly(ir)
        mod.verify()
        objs: list[bytes] = []
        engine = llvm.create_mcjit_compiler(mod, tm)
        engine.set_object_cache(lambda _m, buf: objs.append(bytes(buf)), None)
        engine.finalize_object()
        dt = time.perf_counter() - t0
        note = f"compiled in {dt:.2f} s"
        path: str | None = None
        if cache is not None:
            why = cache.put(key, objs[0]) if objs else "no object code produced"
            if why is None:
                note += " (cached)"
                path = cache.where(key)
            else:
                note += f" (in memory: {why})"
        info = {"cached": False, "seconds": dt, "cache_path": path, "note": note,
                "ir_bytes": len(ir)}  # fmt: skip
        return CompiledForest(engine, n_features, block, info)


# ------------------------------------------------------------------------ self-check


def edge_rows(forest: Any, n: int = 64, seed: int = 0) -> np.ndarray:
    """``float32[n, F]`` rows that reach the forest's edge cases: the first rows hold
    one special value in every feature (NaN, ±inf, ±0, ±1e-36, ±1e-35, float32 max,
    ±1e30, -1); the others mix, per feature, the float32-rounded thresholds of its
    splits and their neighbours (numerical), set members, codes just past and far past
    the bitset, negative, fractional and ``>= 2**31`` codes (categorical), and the
    special values."""
    nodes, cat_bounds, _, _, _, _, _, _, kinds = _args(forest)
    F = int(np.asarray(kinds).shape[0])
    rng = np.random.default_rng(seed)
    f32 = np.finfo(np.float32)
    specials = np.array(
        [np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-36, -1e-36, 1e-35, -1e-35, f32.max, 1e30,
         -1e30, -1.0],
        dtype=np.float32,
    )  # fmt: skip
    thr, feat, flags = nodes["threshold"], nodes["feature"], nodes["flags"]
    cat = (flags & FLAG_CATEGORICAL) != 0
    widths = np.diff(np.asarray(cat_bounds))
    pools: list[np.ndarray] = []
    for f in range(F):
        on_f = feat == f
        if kinds[f] == KIND_CATEGORICAL:
            sets = thr[on_f & cat].astype(np.int64)
            top = 32 * int(widths[sets].max()) if sets.size else 32
            codes = np.arange(-2, top + 2, dtype=np.float64)
            extra = [top + 40.0, 1000.0, -0.5, -0.99, 0.5, 2.0**31, 2.0**31 - 128, 3e9, -3e9]
            pool = np.concatenate([codes, extra])
        else:
            with np.errstate(over="ignore"):
                t = thr[on_f & ~cat].astype(np.float32)
            up = np.nextafter(t, np.float32(np.inf))
            down = np.nextafter(t, np.float32(-np.inf))
            pool = np.concatenate(
                [t, up, down, np.array([0.5, 1.5, 10.0, -10.0], dtype=np.float32)]
            )
        pools.append(np.concatenate([pool.astype(np.float32), specials]))
    X = np.empty((n, F), dtype=np.float32)
    k = min(n, specials.shape[0])
    X[:k] = specials[:k, None]
    for f in range(F):
        X[k:, f] = pools[f][rng.integers(pools[f].shape[0], size=n - k)]
    return X


def _first_difference(ref: np.ndarray, got: np.ndarray) -> int | None:
    same = (ref == got) | (np.isnan(ref) & np.isnan(got))
    bad = np.flatnonzero(~same)
    return int(bad[0]) if bad.size else None


def compare_with_kernel(
    cf: CompiledForest, forest: Any, X: np.ndarray | None = None, threads: int = 1
) -> str | None:
    """Run the compiled batch, row (and, for ``threads > 1``, parallel) paths and the
    :mod:`kernels.forest` batch and row kernels on ``X`` (default :func:`edge_rows`);
    None when every output is bit-identical to the kernel's batch output (NaN equal to
    NaN), else a line describing the first difference. Parallel launches: the caller serialises them (see
    :meth:`CompiledForest.predict_parallel`)."""
    args = _args(forest)
    X = edge_rows(args) if X is None else np.ascontiguousarray(X, dtype=np.float32)
    n = X.shape[0]
    kernel: Any = predict_forest  # numba's Dispatcher type hides the signature
    kernel_row: Any = predict_forest_row
    ref = np.empty(n)
    kernel(X, *args, ref)
    paths: dict[str, np.ndarray] = {}
    out = np.empty(n)
    cf.predict(X, out)
    paths["batch"] = out
    paths["row"] = np.array([cf.predict_row(X[i : i + 1]) for i in range(n)])
    ref_row = np.array([kernel_row(X[i : i + 1], *args) for i in range(n)])
    if threads > 1:
        par = np.empty(n)
        cf.predict_parallel(X, par, threads)
        paths["parallel"] = par
    paths["kernel row"] = ref_row
    for name, got in paths.items():
        i = _first_difference(ref, got)
        if i is not None:
            return (
                f"{name} path differs from kernels.forest on row {i}: "
                f"{got[i]!r} != {ref[i]!r} (inputs {X[i].tolist()})"
            )
    return None
