#!/usr/bin/env python3
"""The sources the host SIMT build compiles: copies of csrc/ files with static __shared__
declarations made per block (and, for a planted-bug variant, one deliberate bug).

C++ has no way to give a function-local variable one instance per concurrently running
block, so the sim build does not compile csrc/cuda directly: CMake runs this script to
write a copy of each file where every

    __shared__ T name[N]...;          (also with __align__(A) before or after __shared__)

becomes, on the same line,

    static char fa_sim_key_name; using fa_sim_t_name = T[N]...;
    fa_sim_t_name& name = ::fastattn::sim::static_shared_ref<fa_sim_t_name>(&fa_sim_key_name, A);

(the running block's instance, see csrc/sim/include/fastattn_sim/runtime.h). Nothing else
changes: each copy starts with `#line 1 "<original path>"` and keeps every line where it
was, so compiler diagnostics, ThreadSanitizer and AddressSanitizer reports name the original
file and line. Relative #includes resolve inside the copy, so the whole tree is copied.

    python sim_sources.py --csrc CSRC --out OUT [--planted NAME] [--stamp FILE] REL...

REL are paths relative to CSRC; each is written to OUT/REL, only when its content changed
(so that an unchanged file does not trigger recompilation). --planted applies the named
bug of csrc/sim/planted.py to its file.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

# `__shared__ T name[dims];`, optionally with __align__(A) on either side of __shared__.
# Scalars (no dims) too. The type is everything between __shared__ and the name.
_SHARED = re.compile(
    r"(?:__align__\(\s*(?P<a1>\d+)\s*\)[ \t]+)?__shared__[ \t]+(?:__align__\(\s*(?P<a2>\d+)\s*\)[ \t]+)?"
    r"(?P<type>[A-Za-z_][\w:<>, \t*]*?)[ \t]+(?P<name>[A-Za-z_]\w*)[ \t]*(?P<dims>(?:\[[^\[\];\n]+\][ \t]*)*);"
)
_EXTERN_BEFORE = re.compile(r"extern\s*$")


def rewrite_shared(text: str) -> str:
    """Every static __shared__ declaration replaced by a per-block one (same line count)."""
    def repl(m: re.Match) -> str:
        if _EXTERN_BEFORE.search(text[max(0, m.start() - 16):m.start()]):
            return m.group(0)  # extern __shared__: dynamic shared memory, nvcc-only
        name, typ, dims = m.group("name"), m.group("type").strip(), m.group("dims").replace(" ", "")
        align = m.group("a1") or m.group("a2") or "16"
        return (f"static char fa_sim_key_{name}; using fa_sim_t_{name} = {typ}{dims}; "
                f"fa_sim_t_{name}& {name} = ::fastattn::sim::static_shared_ref<fa_sim_t_{name}>"
                f"(&fa_sim_key_{name}, {align});")
    return _SHARED.sub(repl, text)


def _load_planted():
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import planted  # noqa: PLC0415  (csrc/sim/planted.py)
    return planted


def mutate(text: str, bug, path: str) -> str:
    """`text` with the planted bug's anchor replaced; an anchor that is gone (the kernel
    changed) becomes an #error naming it, so the variant fails to build, loudly."""
    count = text.count(bug.anchor)
    if count != 1:
        anchor = bug.anchor.strip().replace("\\", "\\\\").replace('"', '\\"').splitlines()[0]
        return (f'#error "planted bug {bug.name}: its anchor \\"{anchor}\\" occurs {count} times in {path} '
                f'(expected once): update csrc/sim/planted.py to the current kernel"\n' + text)
    new = bug.replacement
    missing = bug.anchor.count("\n") - new.count("\n")
    if missing < 0:
        raise ValueError(f"planted bug {bug.name}: the replacement has more lines than the anchor")
    return text.replace(bug.anchor, new + "\n" * missing)


def generate(csrc: Path, out: Path, rels: list[str], planted_name: str | None = None) -> int:
    """Writes the copies; returns how many files changed."""
    bug = None
    if planted_name:
        bug = _load_planted().BUGS[planted_name]
    changed = 0
    for rel in rels:
        src = (csrc / rel).resolve()
        text = src.read_text()
        if bug is not None and rel == bug.file:
            text = mutate(text, bug, rel)
        body = f'#line 1 "{src.as_posix()}"\n' + rewrite_shared(text)
        dst = out / rel
        if dst.exists() and dst.read_text() == body:
            continue
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = dst.with_name(dst.name + ".tmp")
        tmp.write_text(body)
        tmp.replace(dst)
        changed += 1
    return changed


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--csrc", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--planted", default=None)
    ap.add_argument("--stamp", type=Path, default=None, help="touched after a successful run")
    ap.add_argument("files", nargs="*")
    args = ap.parse_args(argv)
    generate(args.csrc, args.out, args.files, args.planted)
    if args.stamp:
        args.stamp.parent.mkdir(parents=True, exist_ok=True)
        args.stamp.touch()
    return 0


if __name__ == "__main__":
    sys.exit(main())
