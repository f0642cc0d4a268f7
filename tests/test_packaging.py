"""The console scripts are installed and answer --help."""

import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.parametrize("script", ["poshost", "posterm", "hsm-sim"])
def test_console_script_help(script: str) -> None:
    path = Path(sys.executable).parent / script
    assert path.exists(), f"{script} is not installed beside {sys.executable}"
    out = subprocess.run([str(path), "--help"], capture_output=True, text=True, check=True)
    assert "Usage" in out.stdout
