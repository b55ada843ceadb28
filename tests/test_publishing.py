"""What a reader needs to cite and reuse the study: CITATION.cff (valid CFF 1.2.0, naming the SIPE paper), the
MIT license, stated alike in LICENSE, pyproject.toml, CITATION.cff and the README, and the repository's address,
written in _config.yml only (CITATION.cff repeats it)."""
from __future__ import annotations

import json
import re
import subprocess
import tomllib
from pathlib import Path

import jsonschema
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
# The Citation File Format's schema for 1.2.0 (CC-BY-4.0), as the PyPI package cffconvert 2.0.0 ships it
# (cffconvert/schemas/1.2.0/schema.json).
CFF_SCHEMA = REPO / "tests" / "data" / "cff-schema-1.2.0.json"
SIPE_AUTHORS = [("Qi", "Chen"), ("Lingxiao", "Yang"), ("Jianhuang", "Lai"), ("Xiaohua", "Xie")]
SIPE_TITLE = "Self-supervised Image-specific Prototype Exploration for Weakly Supervised Semantic Segmentation"
GITHUB_ADDRESS = re.compile(r"https?://(?:www\.)?github\.com/[\w.-]+/[\w.-]+|https?://[\w-]+\.github\.io/(?:[\w./-]*[\w/])?")
# Third-party files kept as published (MathJax; the CFF schema), whose own addresses are theirs.
VENDORED = ("book/_static/", "tests/data/")


def citation() -> dict:
    return yaml.safe_load((REPO / "CITATION.cff").read_text())


def project() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def check_cff(cff: dict) -> None:
    """Raise jsonschema.ValidationError unless cff is valid Citation File Format 1.2.0."""
    jsonschema.validate(cff, json.loads(CFF_SCHEMA.read_text()), format_checker=jsonschema.FormatChecker())


def test_citation_is_valid_cff_1_2_0_for_the_software():
    cff = citation()
    check_cff(cff)
    assert cff["cff-version"] == "1.2.0" and cff["type"] == "software"
    assert cff["version"] == project()["version"]


@pytest.mark.parametrize("breaks", [{"authors": []}, {"cff-version": "1.1.0"}, {"references": [{"title": "x"}]}])
def test_cff_check_rejects_a_broken_citation(breaks):
    with pytest.raises(jsonschema.ValidationError):
        check_cff({**citation(), **breaks})


def test_citation_references_the_sipe_paper():
    (paper,) = [r for r in citation()["references"] if r["title"] == SIPE_TITLE]
    assert paper["type"] == "conference-paper"
    assert [(a["given-names"], a["family-names"]) for a in paper["authors"]] == SIPE_AUTHORS
    assert (paper["year"], paper["start"], paper["end"]) == (2022, 4288, 4298)
    assert "CVPR" in paper["conference"]["name"]


def test_license_is_mit_everywhere():
    text = (REPO / "LICENSE").read_text()
    assert text.startswith("MIT License\n") and "Permission is hereby granted, free of charge" in text
    assert project()["license"] == citation()["license"] == "MIT"
    assert project()["license-files"] == ["LICENSE"]
    readme = (REPO / "README.md").read_text()
    assert "MIT license (`LICENSE`)" in readme and "CITATION.cff" in readme


def repository_url() -> str:
    return yaml.safe_load((REPO / "_config.yml").read_text())["repository"]["url"]


def github_addresses() -> dict[str, set[str]]:
    """{file: GitHub and GitHub Pages addresses in it} over the files git tracks or would track, vendored ones
    left out."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            capture_output=True, check=True).stdout.decode().split("\0")
    found = {}
    for name in filter(None, listed):
        path = REPO / name
        if name.startswith(VENDORED) or not path.is_file():
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        if addresses := set(GITHUB_ADDRESS.findall(text)):
            found[name] = addresses
    return found


def test_repository_address_is_written_in_the_book_config_only():
    url = repository_url()
    assert re.fullmatch(r"https://github\.com/[\w.-]+/[\w.-]+", url), url
    assert citation()["repository-code"] == url
    assert github_addresses() == {"_config.yml": {url}, "CITATION.cff": {url}}


def test_address_search_finds_a_hard_coded_repository():
    repository, pages = "https://" + "github.com/someone/sipe", "https://" + "someone.github.io/sipe/"
    assert GITHUB_ADDRESS.findall(f"see {repository}/issues or {pages}.") == [repository, pages]
