"""The project explains itself: no file refers to a document outside the repository, and every relative link
of the README and docs/ points at a file that exists."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUTSIDE = re.compile(r"\b(DESIGN|CM2_SPEC|DATA_FORMAT|ENVIRONMENT|BENCHMARKS|STYLE)\.md\b")


def _tracked() -> list[Path]:
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            capture_output=True, text=True, check=True).stdout.split()
    return [REPO / name for name in listed if (REPO / name).suffix in {".py", ".md", ".txt", ".yaml", ".toml", ".sh"}]


def test_nothing_refers_to_a_document_outside_the_repository():
    offenders = [f"{path.relative_to(REPO)}:{n}" for path in _tracked() if path.name != "test_docs.py"
                 for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if OUTSIDE.search(line)]
    assert offenders == []


def test_every_relative_link_of_the_readme_and_docs_exists():
    broken = []
    for page in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text(encoding="utf-8")):
            if "://" not in target and not (page.parent / target).exists():
                broken.append(f"{page.relative_to(REPO)} -> {target}")
    assert broken == []
