"""Documents the code and docs point to exist (issue 14 section 5): every ``*.md`` named in a tracked source,
config or document resolves to a file of the repository."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCANNED = (".py", ".md", ".proto", ".toml", ".yaml", ".yml", ".txt", ".cfg")
SCANNED_NAMES = ("Makefile", "Dockerfile")
MD_NAME = re.compile(r"(?<![\w./-])((?:\.\./|\./)?[\w./-]*[\w-]\.md)\b")
# Names that are not references: files a test writes, and mentions of other repositories' documents.
NOT_REFERENCES = {
    ("tests/test_eval_protocols.py", "lh.md"),  # the name of a report the test writes into tmp_path
    ("tests/test_ops_docs.py", "lh.md"),
}


def tracked_files() -> list[Path]:
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout.split()
    return [ROOT / f for f in out if f.endswith(SCANNED) or Path(f).name in SCANNED_NAMES]


def resolves(ref: str, source: Path) -> bool:
    """A reference resolves when it names a file relative to the repository root, to the referring file's folder,
    or (a bare name) exactly one file of the repository."""
    if (ROOT / ref).is_file() or (source.parent / ref).is_file():
        return True
    if "/" not in ref:
        matches = [p for p in ROOT.rglob(ref) if ".venv" not in p.parts and ".git" not in p.parts]
        return len(matches) == 1
    return False


def test_every_markdown_file_named_in_code_and_docs_exists():
    missing = []
    for path in tracked_files():
        if not path.is_file():
            continue
        rel = path.relative_to(ROOT).as_posix()
        for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            for ref in MD_NAME.findall(line):
                if (rel, ref) in NOT_REFERENCES or "://" in line.split(ref)[0][-60:]:  # a URL's page
                    continue
                if not resolves(ref, path):
                    missing.append(f"{rel}:{n}: {ref}")
    assert not missing, "references to documents that do not exist:\n" + "\n".join(missing)


def test_design_doc_has_the_sections_code_points_to():
    text = (ROOT / "docs" / "DESIGN.md").read_text()
    for heading in ("## Conventions", "## Packages and what each owns", "## One Play step", "## Status codes",
                    "## The generator contract", "## Where the method follows the paper and the official code",
                    "## Recordings and the player"):
        assert heading in text, heading
    # the quoted section names in code comments are headings of the design doc
    quoted = set()
    for path in tracked_files():
        if path.suffix in (".py", ".proto") and path.is_file():
            quoted |= {" ".join(q.split()) for q in re.findall(r'docs/DESIGN\.md(?:``)?,? "([^"]+)"', path.read_text())}
    headings = [h[3:] for h in text.splitlines() if h.startswith("## ")]
    for q in quoted:
        assert any(h.startswith(q.rstrip(". ")) for h in headings), f"docs/DESIGN.md has no section {q!r}"


def test_buf_lint_is_clean():
    """``buf lint`` (STANDARD, with the exceptions buf.yaml states) on proto/. buf is a Go binary from npm
    (``npm install @bufbuild/buf``), not a Python package: skipped where it is not on PATH."""
    import shutil

    import pytest

    buf = shutil.which("buf")
    if buf is None:
        pytest.skip("buf is not installed (npm install @bufbuild/buf)")
    out = subprocess.run([buf, "lint"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
