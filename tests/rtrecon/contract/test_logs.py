"""The one log format: every process's lines read alike."""

from __future__ import annotations

import re
import sys

import pytest

from rtrecon.contract import children
from rtrecon.testing import scaled


@pytest.mark.parametrize("process", ["engine", "bridge", "stimulus", "console", "100%"])
def test_each_process_logs_time_process_level_and_logger(process: str) -> None:
    code = (
        "import logging, sys\n"
        "from rtrecon.contract.logs import configure_logging\n"
        f"configure_logging({process!r}, 'INFO', stream=sys.stdout)\n"
        "logging.getLogger('engine.server').warning('volume %d refused', 4)\n"
        "logging.getLogger('x').debug('not shown at INFO')\n"
    )
    out = children.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=scaled(120), check=True).stdout
    pattern = rf"\d{{4}}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{{3}} {re.escape(process)} WARNING engine\.server: volume 4 refused"
    assert re.fullmatch(pattern, out.strip()), out
