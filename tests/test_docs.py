"""Every file the docs point at exists: a newcomer who follows a doc line finds the script it names."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", REPO / "recipes" / "README.md", *sorted((REPO / "docs").glob("*.md"))]
# A repository path: starts at a top-level folder of the project, not inside a longer word or path.
PATH = re.compile(r"(?<![\w./-])((?:recipes|scripts|bench|speechbs|tests|docs|\.ci)/[\w./-]+)")


def _paths(text: str) -> list[str]:
    return [m.rstrip(".,:;") for m in PATH.findall(text)]


def test_the_pattern_finds_paths_and_skips_urls() -> None:
    line = "see `recipes/lab/run.sh`, docs/lab.md. and https://example.org/docs/x.md or runs/recipes/x"
    assert _paths(line) == ["recipes/lab/run.sh", "docs/lab.md"]


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_paths_named_in_docs_exist(doc: Path) -> None:
    missing = [f"{doc.relative_to(REPO)}:{number}: {path}"
               for number, line in enumerate(doc.read_text(encoding="utf-8").splitlines(), start=1)
               for path in _paths(line) if not (REPO / path).exists()]
    assert not missing, "doc lines that point at files that do not exist:\n" + "\n".join(missing)
