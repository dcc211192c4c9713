"""What every benchmark ends with: a description of the machine and the one JSON line of results.

ARCHITECTURE.md's Benchmarks section: the last line a benchmark prints is
``{"benchmark": NAME, "machine": ..., "results": {...}}``.
"""

from __future__ import annotations

import json
import os
import platform
import sys
from pathlib import Path
from typing import Any


def machine(extra: str = "") -> str:
    """CPU model and count, OS, Python, and the GPU when torch sees one (``extra`` appended)."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    parts = [f"{cpu}, {os.cpu_count()} CPUs", f"{platform.system()} {platform.release()}", f"Python {platform.python_version()}"]
    torch = sys.modules.get("torch")
    if torch is not None:
        parts.append(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
        if torch.cuda.is_available():
            parts.append(torch.cuda.get_device_name(0))
    if extra:
        parts.append(extra)
    return "; ".join(parts)


def emit(name: str, results: dict[str, Any], *, machine_extra: str = "", **fields: Any) -> str:
    """Print the benchmark's closing JSON line (``fields`` go beside ``results``) and return it."""
    line = json.dumps({"benchmark": name, "machine": machine(machine_extra), **fields, "results": results})
    print(line, flush=True)
    return line
