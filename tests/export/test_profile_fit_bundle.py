"""``profile fit`` on the embedded bundle: a few graded rows become a profile in a copy of
the bundle that the daemon verifies and ``evaluate`` scores like any router."""

from __future__ import annotations

import json
from pathlib import Path

from agent.cli import main
from agent.router_bundle import BundleManifest, embedded_bundle

TABLE = Path(__file__).resolve().parents[2] / "artifacts" / "expert_table.jsonl.gz"


def test_profile_fit_on_the_embedded_bundle_then_evaluate(tmp_path: Path, capsys) -> None:
    bundle = embedded_bundle()
    assert bundle is not None
    out = tmp_path / "refit"
    assert main(["profile", "fit", "--router", str(bundle), "--table", str(TABLE),
                 "--experts", "smollm2-135m", "--max-per-expert", "20", "--out",
                 str(out)]) == 0
    manifest = BundleManifest.read(out)
    manifest.verify()  # profiles.json rehashed: the daemon would load it
    prof = {p["name"]: p for p in json.loads((out / "profiles.json").read_text())["profiles"]}
    assert prof["smollm2-135m"]["observations"] == 20
    assert "profile fit" in prof["smollm2-135m"]["fitted_on"]
    shipped = {p["name"]: p for p in
               json.loads((bundle / "profiles.json").read_text())["profiles"]}
    assert prof["smollm2-135m"]["theta"] != shipped["smollm2-135m"]["theta"]
    assert prof["gpt-4-1106-preview"] == shipped["gpt-4-1106-preview"]  # others untouched
    capsys.readouterr()
    assert main(["evaluate", "--table", str(TABLE), "--router", str(out), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert "irt" in res["overall"] and res["overall"]["irt"]["quality"] is not None
    assert sorted(res["experts"]) == sorted(
        ["gpt-4-1106-preview", "mixtral-8x7b-instruct", "qwen2.5-coder-0.5b", "smollm2-135m"])
