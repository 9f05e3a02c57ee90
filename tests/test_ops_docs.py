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


def tracked_files() -> list[Path]:
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout.split()
    return [ROOT / f for f in out if f.endswith(SCANNED) or Path(f).name in SCANNED_NAMES]


def resolves(ref: str, source: Path, names: dict[str, int]) -> bool:
    """A reference resolves when it names a file relative to the repository root, to the referring file's folder,
    or (a bare name) exactly one file of the repository (``names``: file name -> how many files carry it)."""
    if (ROOT / ref).is_file() or (source.parent / ref).is_file():
        return True
    return "/" not in ref and names.get(ref, 0) == 1


def text_to_scan(path: Path) -> list[tuple[int, str]]:
    """(line number, text) where references live. Python: strings and comments only (an attribute access can look
    like a file name), and not a string joined onto a path (``tmp_path / "<name>"`` is a file being written)."""
    import io
    import tokenize

    text = path.read_text(errors="replace")
    if path.suffix != ".py":
        return list(enumerate(text.splitlines(), 1))
    out, previous = [], None
    for tok in tokenize.generate_tokens(io.StringIO(text).readline):
        if tok.type in (tokenize.STRING, tokenize.COMMENT):
            if not (tok.type == tokenize.STRING and previous is not None and previous.string == "/"):
                out += [(tok.start[0] + i, line) for i, line in enumerate(tok.string.splitlines())]
        if tok.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.COMMENT):
            previous = tok
    return out


def test_every_markdown_file_named_in_code_and_docs_exists():
    files = [p for p in tracked_files() if p.is_file()]
    names: dict[str, int] = {}
    for p in files:
        names[p.name] = names.get(p.name, 0) + 1
    missing = []
    for path in files:
        rel = path.relative_to(ROOT).as_posix()
        for n, line in text_to_scan(path):
            for ref in MD_NAME.findall(line):
                if "://" in line.split(ref)[0][-60:]:  # a URL's page
                    continue
                # an absolute path names a file on some machine (the eval tables' command lines record where
                # they were written), never a document of the repository; ROOT / "/abs" would test that
                # machine's disk, so the answer would depend on where the tests run
                if ref.startswith("/"):
                    continue
                if not resolves(ref, path, names):
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
    (``npm install @bufbuild/buf``; ``make`` installs it into .venv/buf), not a Python package: skipped where
    neither PATH nor .venv/buf has it (a machine without npm)."""
    import shutil

    import pytest

    buf = shutil.which("buf") or shutil.which("buf", path=str(ROOT / ".venv" / "buf" / "node_modules" / ".bin"))
    if buf is None:
        pytest.skip("buf is not installed (npm install @bufbuild/buf)")
    out = subprocess.run([buf, "lint"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
