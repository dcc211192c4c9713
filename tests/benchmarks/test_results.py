"""The saved benchmark results (``benchmarks/results/``): each line is a benchmark's closing JSON
object with the keys ARCHITECTURE.md's Benchmarks section requires of it."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results"


def _required_keys(shared_dir: Path) -> dict[str, list[str]]:
    """``benchmark -> results keys`` from the table in ARCHITECTURE.md's Benchmarks section."""
    text = (shared_dir / "ARCHITECTURE.md").read_text()
    table = text[text.index("## Benchmarks"):]
    return {name: re.findall(r"`(\w+)`", keys.split("(")[0])
            for name, keys in re.findall(r"^\| `(\w+)` \| (.+) \|$", table, flags=re.M)}


@pytest.mark.parametrize("path", sorted(RESULTS.glob("*.jsonl")), ids=lambda p: p.name)
def test_saved_results_are_closing_lines_of_their_benchmark(path, shared_dir):
    required = _required_keys(shared_dir)
    assert set(required) >= {"bridge_latency", "engine_latency", "loop_latency"}
    lines = path.read_text().splitlines()
    assert lines, f"{path}: empty"
    for number, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            pytest.fail(f"{path}:{number}: not a JSON line ({exc}): {line[:80]!r}")
        name = record.get("benchmark")
        assert path.name.startswith(f"{name}_"), f"{path}:{number}: a {name!r} result in a file named for another"
        assert record.get("machine"), f"{path}:{number}: no machine"
        # A benchmark ARCHITECTURE.md's table does not list yet must still be one of benchmarks/.
        assert name in required or (RESULTS.parent / f"{name}.py").exists(), f"{path}:{number}: unknown benchmark {name!r}"
        missing = [k for k in required.get(name, []) if k not in record.get("results", {})]
        assert not missing, f"{path}:{number}: results lack {missing}"
