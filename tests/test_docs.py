"""The README stays a landing page: small, its two commands verbatim, every relative link in it and in
docs/ leads to a file (and heading) that exists, its demo table is the one the demo writes, and CI runs
the README's test command."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from vift_plugin.toy.report import SEED_LABELS, seeds_table

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
COMMANDS = ["bash scripts/install.sh && vift demo", "bash scripts/install.sh dev && python -m pytest -q"]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
KINDS = ["colour", "count", "position", "shape"]


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = re.sub(r"(?ms)^```.*?^```", "", page.read_text(encoding="utf-8"))
    return {slug(line.lstrip("#")) for line in text.splitlines() if line.startswith("#")}


def relative_links(page: Path) -> list[str]:
    text = re.sub(r"(?ms)^```.*?^```", "", page.read_text(encoding="utf-8"))
    return [t for t in LINK.findall(text) if not re.match(r"[a-z][a-z0-9+.-]*:", t)]


def demo_table(page: Path) -> list[str]:
    lines = page.read_text(encoding="utf-8").splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| model | inference | exact match, mean"))
    end = next(i for i in range(start, len(lines)) if not lines[i].startswith("|"))
    return lines[start:end]


def test_readme_is_a_landing_page() -> None:
    size = len(README.read_bytes())
    assert size <= 10_240, f"README.md is {size} bytes; move detail to docs/"
    text = README.read_text(encoding="utf-8")
    for command in COMMANDS:
        assert command in text, command
    assert "scripts/test_floor.sh" in text
    limitations = text.split("## Limitations", 1)[1].split("\n## ", 1)[0]
    assert 1 <= sum(line.startswith("- ") for line in limitations.splitlines()) <= 10


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_relative_links_lead_to_existing_files_and_headings(page: Path) -> None:
    links = relative_links(page)
    assert links or page.name != "README.md"
    for link in links:
        path, _, anchor = link.partition("#")
        target = (page.parent / path).resolve() if path else page
        assert target.exists(), f"{page.name}: {link} leads nowhere"
        if anchor and target.suffix == ".md":
            assert anchor in anchors(target), f"{page.name}: {link}: no such heading in {target.name}"


def test_readme_links_every_guide() -> None:
    linked = {Path(link.partition("#")[0]).name for link in relative_links(README)}
    guides = {p.name for p in (ROOT / "docs").glob("*.md")}
    assert guides <= linked, sorted(guides - linked)


def test_demo_table_is_the_one_the_demo_writes() -> None:
    """The README's and docs/demo.md's tables agree, and have the header, rows and labels of
    ``vift demo --seeds 0 1 2``'s report."""
    readme, docs = demo_table(README), demo_table(ROOT / "docs" / "demo.md")
    assert readme == docs
    runs = [
        {
            "seed": seed,
            "rows": [
                {
                    "key": key,
                    "label": label,
                    "mode": mode,
                    "summary": {
                        "accuracy": 0.5,
                        "by_type": {} if key == "vift-captions" else {k: {"accuracy": 0.5} for k in KINDS},
                    },
                }
                for key, (label, mode) in SEED_LABELS.items()
            ],
        }
        for seed in (0, 1, 2)
    ]
    written = seeds_table(runs)[0].splitlines()
    assert readme[:2] == written[:2]
    cells = [[cell.strip() for cell in line.split("|")[1:-1]] for line in readme[2:]]
    expected = [[cell.strip() for cell in line.split("|")[1:-1]] for line in written[2:]]
    assert [row[:2] for row in cells] == [row[:2] for row in expected]
    for row, shape in zip(cells, expected, strict=True):
        assert len(row) == len(shape) and all(
            (cell == "-") == (model == "-") for cell, model in zip(row[2:], shape[2:], strict=True)
        )
        assert all(re.fullmatch(r"\d+\.\d% \(\d+\.\d-\d+\.\d\)", cell) for cell in row[2:] if cell != "-")


def test_ci_runs_the_readme_test_command_in_two_tiers() -> None:
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert "bash scripts/install.sh dev" in ci
    lint = ci.index("mypy vift_plugin")
    fast, slow = ci.index('run_tier -m "not slow"'), ci.index("run_tier -m slow")
    floor = ci.index("bash scripts/test_floor.sh")
    assert ci.index("ruff check") < lint < fast < slow < floor
