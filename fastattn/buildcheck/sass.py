"""Machine-code (SASS) analysis of compiled GPU kernels, with no GPU.

A cubin is disassembled with ``nvdisasm`` (the one Triton ships, else the CUDA toolkit's),
each function's control-flow graph is built from its branches, and its loops are found as
natural loops (a back edge ``u -> h`` where ``h`` dominates ``u``). The *main loops* are the
innermost loops holding matrix-multiply-accumulate instructions (``HMMA`` for ``mma.sync``,
``HGMMA``/``QGMMA`` for Hopper's ``wgmma``): the steady state of an attention or GEMM kernel.

Each main loop is counted per iteration and per warp (every warp executes the same code):
instructions by class (:data:`CATEGORIES`), the MMA FLOPs they compute (from the instruction
shapes), and the bytes moved through shared memory, global memory and local memory (spills).
A loop whose body branches (e.g. masking done only on some tiles) is counted along its
longest and its shortest path; straight-line bodies have one path.

:func:`ttir_dot_loops` reads the useful FLOPs per iteration from Triton's IR (the ``tt.dot``
shapes of each innermost loop), so that MMA work repeated across warps shows as a redundancy
factor. The throughput ceilings derived from these counts are in :mod:`fastattn.buildcheck.sass_ceiling`.

Counts are static: a path's instructions counted once per iteration, predicated-off work
included (it still takes an issue slot), callees of ``CALL`` (slow paths) not included.
"""
from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional, Union

# --------------------------------------------------------------------------- instruction classes

CATEGORIES = (
    "mma", "ldsm", "lds", "sts", "ldg", "ldgsts", "tma", "stg", "atomic", "local_load", "local_store",
    "mufu", "ffma", "fmul", "fadd", "fmnmx", "fp16", "fp_other", "convert", "select", "compare", "integer",
    "move", "shuffle", "uniform", "barrier", "branch", "nop", "other",
)
"""Instruction classes, in report order. ``select``: SEL/FSEL (per-element masking); ``compare``:
xSETP/PLOP3; ``uniform``: the warp-wide scalar datapath (U* opcodes: loop bookkeeping, not
per-element work); ``barrier``: BAR, DEPBAR, SYNCS (mbarriers), WARPGROUP fences, MEMBAR;
``nop``: NOP and instructions guarded by the never-true predicate ``!PT``."""

_MMA = {"HMMA", "HGMMA", "QGMMA", "IMMA", "IGMMA", "DMMA", "BMMA", "BGMMA"}
_CLASS = {
    "LDSM": "ldsm", "LDS": "lds", "STS": "sts", "STSM": "sts", "ATOMS": "lds",
    "LDG": "ldg", "LD": "ldg", "LDGSTS": "ldgsts", "UTMALDG": "tma", "UBLKCP": "tma", "UTMAPF": "tma",
    "STG": "stg", "ST": "stg", "UTMASTG": "stg", "UTMAREDG": "atomic", "UBLKRED": "atomic",
    "RED": "atomic", "REDG": "atomic", "ATOM": "atomic", "ATOMG": "atomic",
    "LDL": "local_load", "STL": "local_store",
    "MUFU": "mufu", "FFMA": "ffma", "FFMA32I": "ffma", "FMUL": "fmul", "FMUL32I": "fmul", "FADD": "fadd",
    "FADD32I": "fadd", "FMNMX": "fmnmx", "FMNMX3": "fmnmx",
    "HADD2": "fp16", "HMUL2": "fp16", "HFMA2": "fp16", "HMNMX2": "fp16", "HADD2.F32": "fp16",
    "FCHK": "fp_other", "FSWZADD": "fp_other", "FRND": "fp_other", "DADD": "fp_other", "DMUL": "fp_other",
    "DFMA": "fp_other",
    "F2F": "convert", "F2FP": "convert", "F2I": "convert", "I2F": "convert", "I2FP": "convert", "F2IP": "convert",
    "SEL": "select", "FSEL": "select", "HSEL2": "select",
    "ISETP": "compare", "FSETP": "compare", "HSETP2": "compare", "DSETP": "compare", "PSETP": "compare",
    "PLOP3": "compare", "FSET": "compare", "ISET": "compare", "HSET2": "compare", "VOTE": "compare",
    "VOTEU": "compare",
    "IMAD": "integer", "IMAD32I": "integer", "IADD3": "integer", "IADD": "integer", "IADD32I": "integer",
    "VIADD": "integer", "LEA": "integer", "LOP3": "integer", "LOP": "integer", "LOP32I": "integer",
    "SHF": "integer", "SHL": "integer", "SHR": "integer", "PRMT": "integer", "IABS": "integer",
    "IMNMX": "integer", "VIMNMX": "integer", "VIMNMX3": "integer", "SGXT": "integer", "BMSK": "integer",
    "FLO": "integer", "POPC": "integer", "BREV": "integer", "IDP": "integer", "IMUL": "integer",
    "IMUL32I": "integer", "IDP4A": "integer", "IADD3X": "integer",
    "MOV": "move", "MOV32I": "move", "CS2R": "move", "S2R": "move", "S2UR": "move", "R2UR": "move",
    "P2R": "move", "R2P": "move", "LDC": "move", "SHFL": "shuffle", "MATCH": "shuffle", "REDUX": "shuffle",
    "BAR": "barrier", "DEPBAR": "barrier", "LDGDEPBAR": "barrier", "SYNCS": "barrier", "WARPGROUP": "barrier",
    "MEMBAR": "barrier", "WARPSYNC": "barrier", "ERRBAR": "barrier", "FENCE": "barrier", "ARRIVES": "barrier",
    "CCTL": "barrier", "UCGABAR_ARV": "barrier", "UCGABAR_WAIT": "barrier", "ELECT": "uniform",
    "BRA": "branch", "BRX": "branch", "JMP": "branch", "JMX": "branch", "CALL": "branch", "RET": "branch",
    "EXIT": "branch", "BSSY": "branch", "BSYNC": "branch", "BREAK": "branch", "KILL": "branch", "BPT": "branch",
    "YIELD": "branch", "NANOSLEEP": "branch", "ACQBULK": "barrier",
    "NOP": "nop",
}

# mma.sync shapes as SASS spells them (HMMA.16816 is m16n8k16).
_MMA_SHAPES = {"16816": (16, 8, 16), "1688": (16, 8, 8), "16832": (16, 8, 32), "16864": (16, 8, 64),
               "168256": (16, 8, 256), "884": (8, 8, 4), "8816": (8, 8, 16), "8832": (8, 8, 32),
               "88128": (8, 8, 128), "1684": (16, 8, 4)}
_GMMA_SHAPE = re.compile(r"^(\d+)x(\d+)x(\d+)$")


@dataclass(frozen=True)
class Instruction:
    """One SASS instruction: its byte offset, guard predicate ("" when unguarded), full opcode
    with modifiers ("HMMA.16816.F32"), operand text and branch target offset (or None)."""

    address: int
    predicate: str
    opcode: str
    operands: str
    target: Optional[int] = None

    @property
    def base(self) -> str:
        """The opcode without modifiers ("HMMA")."""
        return self.opcode.split(".", 1)[0]

    @property
    def modifiers(self) -> list:
        return self.opcode.split(".")[1:]


def category(ins: Instruction) -> str:
    """The class of ``ins`` (one of :data:`CATEGORIES`)."""
    if ins.predicate == "!PT":
        return "nop"  # never executes; ptxas pads with these, they still take an issue slot
    base = ins.base
    if base in _MMA:
        return "mma"
    if base in _CLASS:
        return _CLASS[base]
    if base.startswith("U"):
        return "uniform"
    return "other"


def _width_bytes(mods: Iterable[str]) -> int:
    """Bytes per thread of a load/store from its modifiers (.128, .64, .U16, .S8, ...; 4 otherwise)."""
    mods = set(mods)
    if "128" in mods:
        return 16
    if "64" in mods:
        return 8
    if mods & {"U16", "S16"}:
        return 2
    if mods & {"U8", "S8"}:
        return 1
    return 4


@dataclass(frozen=True)
class MmaShape:
    """What one MMA instruction computes, per warp: FLOPs, input kind ("f16", "tf32", "fp8",
    "int8", "fp64"), and shared-memory operand bytes (Hopper's wgmma reads operands there)."""

    flops: int
    kind: str
    shared_bytes: float = 0.0


def mma_shape(ins: Instruction) -> Optional[MmaShape]:
    """The per-warp work of an MMA instruction, or None for an unknown shape.

    ``HMMA.16816`` (m16n8k16) is one warp's ``mma.sync``: 2*16*8*16 FLOPs. ``HGMMA.64xNxK`` is
    a warpgroup's ``wgmma`` (4 warps issue it together; each warp's tensor core computes a
    quarter): 2*64*N*K/4 FLOPs per warp. Its shared-memory operands (``gdesc``: B always, A
    unless it comes from registers) are counted once per warpgroup, a quarter per warp.
    """
    mods = ins.modifiers
    base = ins.base
    kind = "f16"
    if "TF32" in mods:
        kind = "tf32"
    elif any(m in ("E4M3", "E5M2") for m in mods) or base == "QGMMA":
        kind = "fp8"
    elif base in ("IMMA", "IGMMA"):
        kind = "int8"
    elif base == "DMMA":
        kind = "fp64"
    elif base in ("BMMA", "BGMMA"):
        kind = "int1"
    if base in ("HGMMA", "QGMMA", "IGMMA", "BGMMA"):
        for m in mods:
            g = _GMMA_SHAPE.match(m)
            if g:
                mm, nn, kk = (int(x) for x in g.groups())
                elem = 32 / kk  # every wgmma K step is 32 bytes of one row: f16 k16, tf32 k8, fp8 k32
                ops = [o.strip() for o in ins.operands.split(",")]
                a_in_smem = len(ops) > 1 and not re.match(r"^-?R\d+", ops[1])
                smem = nn * kk * elem + (mm * kk * elem if a_in_smem else 0)
                return MmaShape(2 * mm * nn * kk // 4, kind, smem / 4)
        return None
    for m in mods:
        if m in _MMA_SHAPES:
            mm, nn, kk = _MMA_SHAPES[m]
            return MmaShape(2 * mm * nn * kk, kind)
    return None


def shared_bytes(ins: Instruction) -> float:
    """Bytes one warp moves through shared memory with ``ins`` (reads and writes)."""
    base, mods = ins.base, ins.modifiers
    if ins.predicate == "!PT":
        return 0
    if base in ("LDSM", "STSM"):
        count = int(mods[-1]) if mods and mods[-1] in ("1", "2", "4") else 1
        return 128 * count  # each 8x8 matrix of 16-bit elements is 128 bytes
    if base in ("LDS", "STS", "ATOMS", "LDGSTS"):
        return 32 * _width_bytes(mods)  # LDGSTS (cp.async) writes what it loads into shared memory
    if base in _MMA:
        shape = mma_shape(ins)
        return shape.shared_bytes if shape else 0
    return 0


def global_bytes(ins: Instruction) -> int:
    """Bytes one warp loads from global memory with ``ins`` (TMA: unknown statically, 0)."""
    if ins.predicate == "!PT":
        return 0
    if ins.base in ("LDG", "LD", "LDGSTS"):
        return 32 * _width_bytes(ins.modifiers)
    return 0


def local_bytes(ins: Instruction) -> int:
    """Bytes one warp moves to or from local memory (register spills, stack) with ``ins``."""
    if ins.predicate != "!PT" and ins.base in ("LDL", "STL"):
        return 32 * _width_bytes(ins.modifiers)
    return 0


# --------------------------------------------------------------------------- disassembly


def nvdisasm_path() -> Optional[str]:
    """``nvdisasm``: Triton's bundled one, else ``$CUDA_HOME/bin``, PATH or /usr/local/cuda."""
    candidates = []
    try:
        from triton import knobs

        candidates.append(knobs.nvidia.nvdisasm.path)
    except Exception:  # noqa: BLE001  (no Triton, or a Triton without the knob: look elsewhere)
        pass
    for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if home:
            candidates.append(str(Path(home) / "bin" / "nvdisasm"))
    candidates.append(shutil.which("nvdisasm"))
    for cand in candidates:
        if cand and Path(cand).is_file() and os.access(cand, os.X_OK):
            return cand
    return None


@functools.lru_cache(maxsize=None)
def nvdisasm_version(path: str) -> str:
    """The last line of ``nvdisasm --version`` ("Build cuda_13.1...")."""
    out = subprocess.run([path, "--version"], capture_output=True, text=True, check=False).stdout.strip()
    return out.splitlines()[-1] if out else "unknown"


_FUNC = re.compile(r"^\s*//-+\s+\.text\.(\S+)\s+-+")
_CUOBJDUMP_FUNC = re.compile(r"^\s*Function\s*:\s*(\S+)")
_LABEL = re.compile(r"^\s*(\.L\w*):\s*$")
_INS = re.compile(r"^\s*/\*([0-9a-fA-F]+)\*/\s+(.*?)\s*;")
_PRED = re.compile(r"^@(!?U?P(?:[0-6]|T))\s+")
_LABEL_REF = re.compile(r"`\((\.L\w+)\)")
_ADDR_REF = re.compile(r"\b0x([0-9a-fA-F]+)\b")
_BRANCHES = {"BRA", "BRX", "JMP", "JMX"}


def parse_sass(text: str) -> dict:
    """``{function name: [Instruction, ...]}`` from nvdisasm (``-c``) or ``cuobjdump -sass`` text."""
    functions: dict = {}
    current = None
    labels: dict = {}
    pending: list = []  # labels seen before the next instruction
    raw: dict = {}
    for line in text.splitlines():
        m = _FUNC.match(line) or _CUOBJDUMP_FUNC.match(line)
        if m:
            current = m.group(1)
            raw[current], labels[current], pending = [], {}, []
            continue
        if current is None:
            continue
        m = _LABEL.match(line)
        if m:
            pending.append(m.group(1))
            continue
        m = _INS.match(line)
        if not m:
            continue
        address = int(m.group(1), 16)
        for name in pending:
            labels[current][name] = address
        pending = []
        body = m.group(2).strip()
        pred = ""
        p = _PRED.match(body)
        if p:
            pred = p.group(1)
            body = body[p.end():]
        opcode, _, operands = body.partition(" ")
        raw[current].append((address, pred, opcode.strip(), operands.strip()))
    for name, items in raw.items():
        out = []
        for address, pred, opcode, operands in items:
            target = None
            if opcode.split(".", 1)[0] in _BRANCHES | {"CALL", "BSSY"}:
                ref = _LABEL_REF.search(operands)
                if ref and ref.group(1) in labels[name]:
                    target = labels[name][ref.group(1)]
                elif not ref:
                    addr = _ADDR_REF.findall(operands)
                    target = int(addr[-1], 16) if addr else None
            out.append(Instruction(address, pred, opcode, operands, target))
        functions[name] = out
    return functions


def disassemble(cubin: Union[bytes, str, os.PathLike], tool: Optional[str] = None) -> dict:
    """Disassemble a cubin (bytes or a path) into ``{function name: [Instruction, ...]}``."""
    tool = tool or nvdisasm_path()
    if tool is None:
        raise RuntimeError("nvdisasm not found (install Triton, or the CUDA toolkit's nvdisasm)")
    with tempfile.TemporaryDirectory() as tmp:
        if isinstance(cubin, (bytes, bytearray)):
            path = Path(tmp) / "k.cubin"
            path.write_bytes(cubin)
        else:
            path = Path(cubin)
        # -ndf: no dataflow annotation (not needed, and it doubles the time).
        res = subprocess.run([tool, "-c", "-ndf", str(path)], capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise RuntimeError(f"nvdisasm failed on {path.name}: {res.stderr.strip()[-2000:]}")
    return parse_sass(res.stdout)


# --------------------------------------------------------------------------- control flow and loops


@dataclass
class Block:
    """A basic block: instruction indices [start, end) and successor block ids."""

    start: int
    end: int
    succs: list = field(default_factory=list)


def _conditional(ins: Instruction) -> bool:
    """Whether a branch may fall through: guarded (not by PT), or taking a predicate operand
    (``BRA.U !UP0, target``), or a divergence test (``BRA.DIV``)."""
    if ins.predicate and ins.predicate != "PT":
        return True
    if any(m in ("DIV", "CONV", "ANY", "ALL") for m in ins.modifiers):
        return True
    first = ins.operands.split(",")[0].strip()
    return bool(re.match(r"^!?U?P[0-6]$", first))


def build_cfg(instrs: list) -> list:
    """Basic blocks of a function, with successors from branches, exits and fall-through."""
    if not instrs:
        return []
    index = {ins.address: i for i, ins in enumerate(instrs)}
    leaders = {0}
    for i, ins in enumerate(instrs):
        if ins.base in _BRANCHES and ins.target in index:
            leaders.add(index[ins.target])
        if ins.base in _BRANCHES | {"EXIT", "RET", "KILL"} and i + 1 < len(instrs):
            leaders.add(i + 1)
    starts = sorted(leaders)
    block_of = {}
    blocks = []
    for n, s in enumerate(starts):
        e = starts[n + 1] if n + 1 < len(starts) else len(instrs)
        blocks.append(Block(s, e))
        block_of[s] = n
    for n, b in enumerate(blocks):
        last = instrs[b.end - 1]
        falls = n + 1 < len(blocks)
        if last.predicate == "!PT":
            pass  # never taken: plain fall-through
        elif last.base in _BRANCHES:
            if last.target in index:
                b.succs.append(block_of[index[last.target]])
            falls = falls and _conditional(last)
        elif last.base in ("EXIT", "RET", "KILL"):
            falls = falls and bool(last.predicate) and last.predicate != "PT"
        if falls:
            b.succs.append(n + 1)
    return blocks


def _dominators(blocks: list) -> list:
    """dom[n] = set of blocks dominating n (for blocks reachable from block 0; else empty)."""
    n = len(blocks)
    preds = [[] for _ in range(n)]
    for i, b in enumerate(blocks):
        for s in b.succs:
            preds[s].append(i)
    reach, stack = {0}, [0]
    while stack:
        for s in blocks[stack.pop()].succs:
            if s not in reach:
                reach.add(s)
                stack.append(s)
    dom = [set(reach) if i in reach else set() for i in range(n)]
    dom[0] = {0}
    changed = True
    while changed:
        changed = False
        for i in sorted(reach):
            if i == 0:
                continue
            ps = [dom[p] for p in preds[i] if p in reach]
            new = set.intersection(*ps) | {i} if ps else {i}
            if new != dom[i]:
                dom[i] = new
                changed = True
    return dom


@dataclass
class Loop:
    """A natural loop: header block, latch blocks (with the back edge) and body block ids."""

    header: int
    latches: set
    body: set


def find_loops(blocks: list) -> list:
    """Natural loops (back edges to a dominating header; loops sharing a header merged), by header."""
    if not blocks:
        return []
    dom = _dominators(blocks)
    preds = [[] for _ in blocks]
    for i, b in enumerate(blocks):
        for s in b.succs:
            preds[s].append(i)
    loops: dict = {}
    for u, b in enumerate(blocks):
        for h in b.succs:
            if h in dom[u]:
                body = {h, u}
                stack = [u] if u != h else []
                while stack:
                    x = stack.pop()
                    for p in preds[x]:
                        if p not in body:
                            body.add(p)
                            stack.append(p)
                lp = loops.setdefault(h, Loop(h, set(), set()))
                lp.latches.add(u)
                lp.body |= body
    return [loops[h] for h in sorted(loops)]


def _path_counts(instrs: list, blocks: list, loop: Loop, dom: list, longest: bool) -> list:
    """Instruction indices along the longest (or shortest) path header -> latch of ``loop``,
    ignoring back edges (nested loops' bodies counted once)."""
    body = loop.body
    weight = {b: blocks[b].end - blocks[b].start for b in body}
    succ = {b: [s for s in blocks[b].succs if s in body and s not in dom[b]] for b in body}
    order, seen = [], set()

    def visit(x):  # iterative DFS post-order for a topological order of the acyclic body
        stack = [(x, iter(succ[x]))]
        seen.add(x)
        while stack:
            node, it = stack[-1]
            nxt = next((s for s in it if s not in seen), None)
            if nxt is None:
                order.append(node)
                stack.pop()
            else:
                seen.add(nxt)
                stack.append((nxt, iter(succ[nxt])))

    visit(loop.header)
    order.reverse()
    best = {loop.header: weight[loop.header]}
    back = {loop.header: None}
    better = (lambda a, b: a > b) if longest else (lambda a, b: a < b)
    for x in order:
        if x not in best:
            continue
        for s in succ[x]:
            cand = best[x] + weight[s]
            if s not in best or better(cand, best[s]):
                best[s] = cand
                back[s] = x
    ends = [b for b in loop.latches if b in best]
    if not ends:
        return [i for b in sorted(body) for i in range(blocks[b].start, blocks[b].end)]
    end = (max if longest else min)(ends, key=lambda b: best[b])
    path = []
    while end is not None:
        path.append(end)
        end = back[end]
    return [i for b in sorted(path) for i in range(blocks[b].start, blocks[b].end)]


def count(instrs: Iterable[Instruction]) -> dict:
    """Per-warp counts of ``instrs``: every category of :data:`CATEGORIES`, ``instructions``,
    ``ex2`` (MUFU.EX2), ``mma_flops`` and ``mma_flops_by_kind``, ``unknown_mma``, and bytes:
    ``shared_bytes``, ``global_load_bytes``, ``local_bytes``."""
    c = {k: 0 for k in CATEGORIES}
    c.update(instructions=0, ex2=0, mma_flops=0, mma_flops_by_kind={}, unknown_mma=0, shared_bytes=0.0,
             global_load_bytes=0, local_bytes=0)
    for ins in instrs:
        cat = category(ins)
        c[cat] += 1
        c["instructions"] += 1
        if cat == "mufu" and "EX2" in ins.modifiers:
            c["ex2"] += 1
        if cat == "mma":
            shape = mma_shape(ins)
            if shape is None:
                c["unknown_mma"] += 1
            else:
                c["mma_flops"] += shape.flops
                c["mma_flops_by_kind"][shape.kind] = c["mma_flops_by_kind"].get(shape.kind, 0) + shape.flops
        c["shared_bytes"] += shared_bytes(ins)
        c["global_load_bytes"] += global_bytes(ins)
        c["local_bytes"] += local_bytes(ins)
    return c


def analyse_function(instrs: list) -> dict:
    """The loops of one function and the per-warp, per-iteration counts of its main loops.

    Returns ``{"instructions": n, "loops": number of loops, "main_loops": [view, ...]}``; each
    view is a path through one main loop: ``loop`` (its index among the main loops, in address
    order), ``path`` ("only" for a body without branches, else "longest"/"shortest"),
    ``start``/``end`` (byte offsets of the loop's first and last instruction), and the
    :func:`count` fields.
    """
    blocks = build_cfg(instrs)
    loops = find_loops(blocks)
    dom = _dominators(blocks) if blocks else []

    def has_mma(lp):
        return any(category(instrs[i]) == "mma" for b in lp.body for i in range(blocks[b].start, blocks[b].end))

    mma_loops = [lp for lp in loops if has_mma(lp)]
    main = [lp for lp in mma_loops if not any(o is not lp and o.body < lp.body for o in mma_loops)]
    views = []
    for n, lp in enumerate(sorted(main, key=lambda lp: blocks[lp.header].start)):
        first = min(blocks[b].start for b in lp.body)
        last = max(blocks[b].end for b in lp.body) - 1
        long_idx = _path_counts(instrs, blocks, lp, dom, longest=True)
        short_idx = _path_counts(instrs, blocks, lp, dom, longest=False)
        span = dict(loop=n, start=instrs[first].address, end=instrs[last].address)
        if len(long_idx) == len(short_idx):
            views.append(dict(span, path="only", **count(instrs[i] for i in long_idx)))
        else:
            views.append(dict(span, path="longest", **count(instrs[i] for i in long_idx)))
            views.append(dict(span, path="shortest", **count(instrs[i] for i in short_idx)))
    return {"instructions": len(instrs), "loops": len(loops), "main_loops": views}


def label_views(views: list) -> None:
    """Set ``masked`` and ``label`` on a kernel's main-loop views (in place).

    Views doing the same MMA work per warp are the same math (a causal kernel's loops over
    diagonal and off-diagonal tiles, or one loop's paths with and without its masking code):
    among them a view is *masked* when it holds more per-element selects (SEL/FSEL) than the
    leanest, *unmasked* when it is the leanest and another is masked. Otherwise ``masked`` is
    None (one view; equal selects; or loops doing different math, e.g. two GEMM phases).
    """
    groups: dict = {}
    for v in views:
        groups.setdefault(v["mma_flops"], []).append(v)
    for group in groups.values():
        fewest = min(v["select"] for v in group)
        any_masked = any(v["select"] > fewest for v in group)
        for v in group:
            v["masked"] = (v["select"] > fewest) if any_masked else None
    several_loops = len({v["loop"] for v in views}) > 1
    for v in views:
        parts = []
        if several_loops:
            parts.append(f"loop {v['loop'] + 1}")
        if v["masked"] is not None:
            parts.append("masked" if v["masked"] else "unmasked")
        if v["path"] != "only":
            parts.append(f"{v['path']} path")
        v["label"] = ", ".join(parts) or "main loop"


# --------------------------------------------------------------------------- Triton IR: useful FLOPs


_TENSOR = re.compile(r"tensor<([0-9x]+)x[a-zA-Z]\w*")


def _dot_flops(line: str) -> Optional[tuple]:
    """(flops, [batch..., M, N, K]) of a ``tt.dot`` line from its operand types."""
    types = line.rsplit(" : ", 1)[-1]
    shapes = [[int(d) for d in m.split("x")] for m in _TENSOR.findall(types)]
    if len(shapes) < 2:
        return None
    a, b = shapes[0], shapes[1]
    m, k, n = a[-2], a[-1], b[-1]
    batch = 1
    for d in a[:-2]:
        batch *= d
    return 2 * batch * m * n * k, a[:-2] + [m, n, k]


def ttir_dot_loops(ttir: str) -> list:
    """The innermost ``scf.for`` loops of Triton IR holding ``tt.dot``, in program order:
    ``[{"useful_flops": per-iteration FLOPs of the loop's dots, "dots": [[M, N, K], ...]}]``.

    These are the FLOPs the tile needs (a CTA's math), against which the MMA instructions that
    every warp issues show the work repeated across warps. Dots under an ``scf.if`` in the loop
    count as if taken.
    """
    stack: list = []  # [kind, direct dot flops, dots, has nested dot loop]
    loops: list = []
    for line in ttir.splitlines():
        code = line.split(" loc(")[0]
        if "tt.dot " in code or "tt.dot_scaled " in code:
            got = _dot_flops(code)
            for frame in reversed(stack):
                if frame[0] == "for":
                    if got:
                        frame[1] += got[0]
                        frame[2].append(got[1])
                    break
        opens, closes = code.count("{"), code.count("}")
        delta = opens - closes
        if delta > 0:
            for _ in range(delta):
                stack.append(["for" if "scf.for " in code else "other", 0, [], False])
        elif delta < 0:
            for _ in range(-delta):
                if not stack:
                    break
                kind, flops, dots, nested = stack.pop()
                if kind == "for" and (flops or nested):
                    if flops and not nested:
                        loops.append({"useful_flops": flops, "dots": dots, "_order": len(loops)})
                    for frame in reversed(stack):
                        if frame[0] == "for":
                            frame[3] = True
                            break
    # Loops close innermost-first; program order is the order they were closed in, which for
    # sibling loops is source order.
    return [{k: v for k, v in lp.items() if k != "_order"} for lp in loops]
