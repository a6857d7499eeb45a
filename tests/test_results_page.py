"""benchmarks/results_page.py: experiment reports are pasted from their own files, never typed."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def load_page_module(monkeypatch, tmp_path):
    spec = importlib.util.spec_from_file_location("results_page", REPO / "benchmarks" / "results_page.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "EXPERIMENTS", tmp_path / "docs" / "experiments")
    return module


def fake_experiment(path: Path, name: str, quick: bool = False) -> Path:
    (path / "plots").mkdir(parents=True)
    (path / "results.json").write_text(json.dumps({"experiment": name, "quick": quick}))
    (path / "report.md").write_text(f"# {name}\n\n| variant | acc |\n|---|---:|\n| `a` | 0.9871 |\n\n![acc](plots/acc.png)\n")
    (path / "plots" / "acc.png").write_bytes(b"\x89PNG fake")
    return path


def test_imported_report_is_pasted_verbatim_with_links_into_docs(monkeypatch, tmp_path):
    page = load_page_module(monkeypatch, tmp_path)
    page.import_experiment(fake_experiment(tmp_path / "run" / "classify-ladder", "classify-ladder"))
    page.import_experiment(fake_experiment(tmp_path / "run" / "mlp-warmup", "mlp-warmup"))
    dest = tmp_path / "docs" / "experiments" / "classify-ladder"
    assert (dest / "plots" / "acc.png").read_bytes() == b"\x89PNG fake"
    text = "\n".join(page.experiment_reports())
    assert text.index("### mlp-warmup") < text.index("### classify-ladder")  # the tutorials' order
    assert "| `a` | 0.9871 |" in text  # the figure as the experiment wrote it
    assert "](experiments/classify-ladder/plots/acc.png)" in text


def test_quick_results_are_refused(monkeypatch, tmp_path):
    page = load_page_module(monkeypatch, tmp_path)
    with pytest.raises(SystemExit, match="--quick"):
        page.import_experiment(fake_experiment(tmp_path / "q", "classify-ladder", quick=True))
