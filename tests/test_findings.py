"""The Findings page (sipe.study.findings): its sentences and forest plot come from claims.csv and follow it."""
from __future__ import annotations

import re
import shutil
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import pandas as pd
import pytest

from sipe.study import findings

CLAIMS = Path(__file__).resolve().parents[1] / "results" / "subset" / "claims.csv"
MAIN = "SIPE beats the CAM baseline (localization maps)"


@pytest.fixture
def results_dir(tmp_path: Path) -> Path:
    shutil.copy(CLAIMS, tmp_path / findings.CLAIMS_FILE)
    return tmp_path


def counted(text: str, word: str) -> int:
    return int(re.search(rf"(\d+) {word}\b", text).group(1))


def test_sentences_quote_the_counts_and_numbers_of_claims_csv(results_dir: Path):
    claims = findings.read_claims(results_dir)
    sentences = findings.findings_sentences(claims)
    assert 3 <= len(sentences) <= 5
    text = " ".join(sentences)
    verdicts = claims["verdict"].value_counts()
    assert f"Of the {len(claims)} claims" in text
    assert counted(text, "hold") == verdicts["holds"] and counted(text, "fail") == verdicts["fails"]
    assert counted(text, "are mixed") == verdicts["mixed"]
    for claim, name in findings.HEADLINE.items():
        row = claims.set_index("claim").loc[claim]
        assert (f"{name}: {row['ours_mean']:+.1f} (95% interval {row['ci_low']:+.1f} to {row['ci_high']:+.1f}; "
                f"paper {row['paper_delta']:+.1f}; {row['verdict']})") in text
    sized = claims[claims["magnitude"].notna()]
    assert f"Of the {len(sized)} claims with an interval" in text
    assert f"the median claim reproduces {sized['share'].median():.0%}" in text
    for claim in claims.loc[claims["verdict"] == "fails", "claim"]:
        assert claim in text


def test_sentences_change_when_claims_csv_changes(results_dir: Path):
    before = findings.findings_markdown(findings.read_claims(results_dir))
    claims = pd.read_csv(results_dir / findings.CLAIMS_FILE)
    main = claims["claim"] == MAIN
    claims.loc[main, ["ours_mean", "ci_low", "ci_high", "verdict"]] = [-7.25, -9.5, -5.0, "fails"]
    claims.to_csv(results_dir / findings.CLAIMS_FILE, index=False)
    after = findings.findings_markdown(findings.read_claims(results_dir))
    assert after != before
    assert "SIPE over the CAM baseline (Table 1): -7.2 (95% interval -9.5 to -5.0; paper +8.5; fails)" in after
    assert counted(after, "fail") == counted(before, "fail") + 1
    assert counted(after, "hold") == counted(before, "hold") - 1
    assert f"Failing: {MAIN};" in after


def test_forest_figure_has_one_row_per_claim_with_full_names_and_its_legend_inside(results_dir: Path):
    claims = findings.read_claims(results_dir)
    fig = findings.forest_figure(claims)
    fig.canvas.draw()
    (ax,) = fig.axes
    labels = [t.get_text().replace("\n", " ").removesuffix(" [cosine]") for t in ax.get_yticklabels()]
    assert labels == claims["claim"].tolist()
    assert all(len(line) <= findings.WRAP for t in ax.get_yticklabels() for line in t.get_text().split("\n"))
    diamonds = [line for line in ax.lines if line.get_marker() == "D"]
    assert len(diamonds) == claims["paper_delta"].notna().sum()
    dots = sorted(float(line.get_xdata()[0]) for line in ax.lines if line.get_marker() == "o")
    assert dots == pytest.approx(sorted(claims["ours_mean"].dropna()))
    box = fig.bbox
    for legend in fig.legends:
        extent = legend.get_window_extent()
        assert box.x0 <= extent.x0 and extent.x1 <= box.x1 and box.y0 <= extent.y0 and extent.y1 <= box.y1


def test_missing_claims_csv_says_who_writes_it(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="sipe.reproduce"):
        findings.read_claims(tmp_path)
