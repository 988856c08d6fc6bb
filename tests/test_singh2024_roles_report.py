"""The Singh et al. report names the heads a role-based condition really clamped (read from summary.json)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pandas as pd
import pytest

from clamp.report_groups import RunData

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("singh_make_results", ROOT / "experiments" / "singh2024" / "make_results.py")
M = importlib.util.module_from_spec(_spec)
sys.modules["singh_make_results"] = M
_spec.loader.exec_module(M)


def _choice(layer: int, heads: list[int], complement: bool = False) -> dict:
    return {"heads": heads, "ranked": heads, "scores": [0.0] * 8, "measured_on": "x.ckpt", "step": None,
            "spec": {"layer": layer, "metric": "task/induction_strength", "k": 1, "order": "top", "complement": complement}}


def _run(seed: int, roles: dict | None) -> RunData:
    summary = {"interventions": [{"name": "only_kept_l1", "roles": roles}]} if roles else {"interventions": []}
    return RunData(Path(f"/r/seed{seed}"), {"condition": "c", "seed": seed}, summary, pd.DataFrame(columns=["step", "tag", "value"]))


def test_kept_head_by_index_or_from_the_complement_of_the_ablated_role() -> None:
    assert M.kept_head(_run(0, None), "h3") == 3
    ablated = [h for h in range(8) if h != 5]
    assert M.kept_head(_run(0, {"ablated": _choice(1, ablated, complement=True)}), "strongest") == 5
    assert M.kept_head(_run(0, {"kept": _choice(1, [2]), "ablated": _choice(1, [0, 1, 3, 4, 5, 6, 7], True)}), "weakest") == 2


def test_kept_head_refuses_a_run_whose_roles_are_missing() -> None:
    with pytest.raises(ValueError, match="strongest.*kept=\\[\\]"):
        M.kept_head(_run(0, None), "strongest")


def test_role_table_lists_each_seeds_choice_and_refuses_disagreeing_conditions(tmp_path: Path) -> None:
    rep = M.Report(tmp_path, tmp_path, bank="omniglot")
    roles0 = {"prev": _choice(0, [2]), "kept": _choice(1, [6])}
    roles1 = {"prev": _choice(0, [1]), "kept": _choice(1, [0])}
    rep.role_table({"none": [_run(0, roles0), _run(1, roles1)], "pt_1": [_run(0, roles0)]})
    text = "\n".join(rep.lines)
    assert "| 0 | L1H6 | L0H2 |" in text and "| 1 | L1H0 | L0H1 |" in text
    bad = {"prev": _choice(0, [3]), "kept": _choice(1, [6])}
    with pytest.raises(ValueError, match="role 'prev' chose \\[3\\]"):
        rep.role_table({"none": [_run(0, roles0)], "pt_1": [_run(0, bad)]})


def _verdict_rows(text: str) -> list[str]:
    start = text.index("| finding | the paper")
    return [line for line in text[start:].splitlines()[:20] if line.startswith("|")]


def test_readme_verdict_table_is_the_one_results_md_was_generated_with() -> None:
    """The README may not claim more than RESULTS.md: make_results.py writes its block; this catches a hand edit."""
    readme = (ROOT / "README.md").read_text()
    block = readme.split(M.README_BEGIN, 1)[1].split(M.README_END, 1)[0]
    results = (ROOT / "experiments" / "singh2024" / "RESULTS.md").read_text()
    assert _verdict_rows(block) == _verdict_rows(results.split("## Verdicts", 1)[1])


def test_update_readme_replaces_only_the_marked_block(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{M.README_BEGIN}\nold table\n{M.README_END}\noutro\n")
    M.update_readme(readme, ["| a | b |", "|---|---|"])
    assert readme.read_text() == f"intro\n{M.README_BEGIN}\n| a | b |\n|---|---|\n{M.README_END}\noutro\n"
    readme.write_text("no markers\n")
    with pytest.raises(ValueError, match="no .*block"):
        M.update_readme(readme, ["x"])
