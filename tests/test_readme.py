"""The README's Python API example runs as printed and writes a bundle that checks out."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from maskseg.engine.verify import check_bundle

REPO = Path(__file__).resolve().parent.parent


def test_python_api_example_runs(tmp_path) -> None:
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Python API") :]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    (tmp_path / "assets").symlink_to(REPO / "assets")
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
    )
    assert result.returncode == 0, result.stderr
    assert "Shapes demo" in result.stdout
    zips = list(tmp_path.glob("*.zip"))
    assert len(zips) == 1
    assert check_bundle(zips[0]).num_instances > 0
