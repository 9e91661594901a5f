"""The README is a front page and every page it leads to is there: under 12 KB, every relative
link in it and in docs/ resolving to a file, every docs page reachable from the README."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def links(page: Path) -> set[Path]:
    return {(page.parent / target).resolve() for target in LINK.findall(page.read_text())
            if not target.startswith(("http://", "https://", "mailto:"))}


def test_the_readme_is_a_front_page_from_which_every_page_is_reached() -> None:
    assert len((ROOT / "README.md").read_bytes()) < 12 * 1024
    for page in PAGES:
        missing = [str(target) for target in links(page) if not target.exists()]
        assert not missing, f"{page.name} links to missing {missing}"
    reached, frontier = {ROOT / "README.md"}, [ROOT / "README.md"]
    while frontier:
        for target in links(frontier.pop()):
            if target.suffix == ".md" and target not in reached:
                reached.add(target)
                frontier.append(target)
    assert {page.resolve() for page in PAGES} <= reached
