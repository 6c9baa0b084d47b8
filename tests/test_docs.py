"""The documentation: the README's quickstart runs, its test command is the one CI reads, the
guides' links resolve, the size limits hold, and no file speaks of work sessions, dates relative
to "now" or issue numbers (a reader of the repository has none of that context)."""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
BENCHMARKS = ROOT / "BENCHMARKS.md"
DOCS = ROOT / "docs"
GUIDES = ("sweeps.md", "real-logs.md", "trusting-the-simulator.md", "export-and-serving.md",
          "decisions.md")  # fmt: skip
README_LIMIT = 15 * 1024
BENCHMARKS_LIMIT = 30 * 1024
# CI (.ci/run) runs the first README line that starts so and names pytest: it must be this one
TEST_COMMAND = (
    "python3 -m venv .venv && .venv/bin/pip install -c constraints-cpu.txt -e '.[dev]' "
    "&& .venv/bin/pytest"
)
MAIN_COMMAND = (
    "python3 -m venv .venv && .venv/bin/pip install -c constraints-cpu.txt -e . "
    "&& .venv/bin/rankgym train"
)

# patterns: begin (this block is left out of the scan below)
ORDINALS = (
    "first|second|third|fourth|fifth|sixth|seventh|eighth|ninth|tenth|eleventh|twelfth|"
    "thirteenth|fourteenth|fifteenth|sixteenth|seventeenth|eighteenth|nineteenth|twentieth|"
    r"\d+(?:st|nd|rd|th)"
)
# "session" alone is a domain word (a user's session): only these phrases mean a session of work
FORBIDDEN = {
    "today": re.compile(r"\btoday\b", re.IGNORECASE),
    "an ordinal work session": re.compile(rf"\b(?:{ORDINALS})\s+session\b", re.IGNORECASE),
    "this/previous/last/next session": re.compile(
        r"\b(?:this|previous|last|next)\s+session\b", re.IGNORECASE
    ),
    "an issue number": re.compile(r"\bissues?[\s-]*#?\d+", re.IGNORECASE),
    "an issue reference": re.compile(r"(?:^|(?<=\s))#\d+\b"),
}
# the same words in their domain sense (a user's session), allowed where they occur
DOMAIN_PHRASES = (re.compile(r"\bleave this session out\b", re.IGNORECASE),)
SCAN_EXCLUDED = ("tests/fixtures/",)  # data files in real formats, not prose
# what the patterns must catch, and domain phrases they must let through
CAUGHT = (
    "measured today", "in the eighth session", "the 12th session's runs", "after this session",
    "the previous session's figures", "issue 9's goals", "issues 14, 12", "the issue-13 probe",
    "see #12", "(Issue #3)",
)  # fmt: skip
ALLOWED = (
    "each session of the log", "a user's sessions", "a session's requests",
    "the items' counts leave this session out", "colour #1f77b4", "sessions=valid",
    "the first sessions of a user", "x[#]",
)  # fmt: skip
# patterns: end


def repository_files() -> list[Path]:
    """Every text file git tracks or would track (untracked but not ignored), fixtures aside."""
    try:
        out = subprocess.run(
            ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
            cwd=ROOT, capture_output=True, check=True,
        ).stdout  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    names = sorted({n for n in out.decode().split("\0") if n})
    return [ROOT / n for n in names if not n.startswith(SCAN_EXCLUDED) and (ROOT / n).is_file()]


def text_of(path: Path) -> str | None:
    """The file's text, or ``None`` for a binary file (a NUL byte, or not UTF-8)."""
    data = path.read_bytes()
    if b"\0" in data[:8192]:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def scanned_lines(path: Path, text: str) -> list[tuple[int, str]]:
    """``(line number, line)`` of ``text``; this file's own pattern block is left out."""
    lines = list(enumerate(text.splitlines(), start=1))
    if path.resolve() != Path(__file__).resolve():
        return lines
    inside, kept = False, []
    for number, line in lines:
        if line.strip() == "# patterns: begin (this block is left out of the scan below)":
            inside = True
        elif line.strip() == "# patterns: end":
            inside = False
        elif not inside:
            kept.append((number, line))
    return kept


def forbidden_phrases(line: str) -> list[str]:
    """What ``line`` says that a reader of the repository cannot place, by pattern name."""
    for phrase in DOMAIN_PHRASES:
        line = phrase.sub(" ", line)
    return [f"{name}: {m.group(0)!r}" for name, p in FORBIDDEN.items() for m in p.finditer(line)]


def test_the_patterns_catch_what_they_are_for() -> None:
    assert [line for line in CAUGHT if not forbidden_phrases(line)] == []
    assert {line: forbidden_phrases(line) for line in ALLOWED if forbidden_phrases(line)} == {}


def test_no_file_speaks_of_work_sessions_today_or_issue_numbers() -> None:
    hits = []
    for path in repository_files():
        text = text_of(path)
        if text is None:
            continue
        for number, line in scanned_lines(path, text):
            for what in forbidden_phrases(line):
                hits.append(f"{path.relative_to(ROOT)}:{number}: {what}")
    assert hits == [], "\n".join(hits)


def test_size_limits() -> None:
    assert len(README.read_bytes()) <= README_LIMIT
    assert len(BENCHMARKS.read_bytes()) <= BENCHMARKS_LIMIT


def test_every_guide_exists() -> None:
    assert [g for g in GUIDES if not (DOCS / g).is_file()] == []


def relative_links(path: Path) -> list[str]:
    """The Markdown links and images of ``path`` that point into the repository."""
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.DOTALL)  # code is not a link
    targets = re.findall(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)", text)
    return [t for t in targets if not re.match(r"^[a-z][a-z0-9+.-]*:", t) and t[0] != "#"]


def anchors(page: Path) -> set[str]:
    """The anchors GitHub gives the headings of a Markdown page."""
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.DOTALL)
    headings = re.findall(r"^#+\s+(.*?)\s*$", text, flags=re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in headings}


def test_relative_links_resolve() -> None:
    broken = []
    for page in [README, *sorted(DOCS.glob("*.md"))]:
        for target in relative_links(page):
            path, _, anchor = target.partition("#")
            linked = page.parent / path
            if not linked.exists():
                broken.append(f"{page.relative_to(ROOT)}: {target}")
            elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such heading)")
    assert broken == []


def test_readme_begins_with_the_two_fresh_machine_commands() -> None:
    text = README.read_text()
    first = re.search(r"```bash\n(.*?)```", text, re.DOTALL)
    assert first is not None
    assert first.group(1).splitlines() == [MAIN_COMMAND, TEST_COMMAND]
    before = text[: first.start()].strip().split("\n\n")
    assert len(before) <= 2 and before[0].startswith("# ")  # the title, at most one paragraph
    # what .ci/run reads: the first line starting "python3 -m venv .venv && " that names pytest
    ci = [
        line for line in text.splitlines()
        if line.startswith("python3 -m venv .venv && ") and "pytest" in line
    ]  # fmt: skip
    assert ci[0] == TEST_COMMAND


@pytest.mark.slow
def test_readme_quickstart_runs(tmp_path: Path) -> None:
    """The README's first Python block, run as a user would, in an empty directory."""
    block = re.search(r"```python\n(.*?)```", README.read_text(), re.DOTALL)
    assert block is not None
    script = tmp_path / "quickstart.py"
    script.write_text(block.group(1))
    # one torch thread: the suite may run beside other jobs on 2 cores, where torch's
    # threads would spin against each other
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    value = re.fullmatch(r"true expected clicks per request: (\d+\.\d+)", lines[-2])
    assert value is not None, done.stdout
    # the README says about 1.25; random ranks at 0.89, the oracle at 1.36
    assert 1.1 < float(value.group(1)) < 1.36
    top = ast.literal_eval(lines[-1])
    assert len(top) == 3 and all(isinstance(i, str) and isinstance(s, float) for i, s in top)
    manifest = json.loads((tmp_path / "ranker" / "manifest.json").read_text())
    assert manifest["encoder"]["name"] == "hashing"
    assert (tmp_path / "data" / "synthetic" / "meta.json").is_file()
