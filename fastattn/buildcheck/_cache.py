"""The on-disk cache of the build checks: compiles and analyses take seconds each, and their
results depend only on what their keys hash (sources, options, tool versions)."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Optional


def cache_dir(name: str) -> Path:
    """``$FASTATTN_CACHE_DIR/<name>``, by default ``~/.cache/fastattn/<name>``."""
    root = os.environ.get("FASTATTN_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "fastattn")
    return Path(root) / name


def read_json(path: Path) -> Optional[Any]:
    """The JSON value cached at ``path``, or None when there is none (or it cannot be read)."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def write_json(path: Path, value: Any) -> None:
    """Cache ``value`` at ``path`` atomically (a temporary file renamed over it, so a concurrent
    reader never sees half a file); best effort: a cache that cannot be written only costs a
    recomputation."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(value))
        tmp.replace(path)
    except OSError:
        pass
