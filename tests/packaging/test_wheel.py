"""The built wheel, not the editable checkout, installs into a fresh venv and serves."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO


def test_wheel_installs_in_fresh_venv_and_serves(tmp_path: Path) -> None:
    venv, dist = tmp_path / "venv", tmp_path / "dist"
    proc = subprocess.run(
        [sys.executable, str(REPO / "packaging" / "wheel_check.py"), "--venv", str(venv),
         "--dist", str(dist)],
        capture_output=True, text=True, timeout=180, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout[: proc.stdout.rindex("}") + 1])
    assert report["wheel"].startswith("edgeroute-") and (dist / report["wheel"]).is_file()
    assert report["agent_file"].startswith(str(venv)), "imported the checkout, not the wheel"
    assert (venv / "bin" / "edgeroute").is_file()
    assert [e["name"] for e in report["health"]["experts"]] == ["smollm2-135m"]
    answer = report["predict"]["choices"][0]["message"]["content"]
    assert answer.strip()
