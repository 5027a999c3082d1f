"""The repository documents itself: the front page stays short, every citation of docs/ in code, configs and reports
names a section that exists, every relative link resolves, nothing points at a document outside the repository, and
every command the README shows starts (its script and config files exist and its arguments parse)."""
import re
import shlex
import subprocess
from pathlib import Path

import pytest

from conftest import REPO, run

TRACKED = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True).stdout.split()
TEXT = [REPO / f for f in TRACKED if f.endswith((".py", ".md", ".sh", ".txt", ".ini")) and (REPO / f).is_file()]
MARKDOWN = [p for p in TEXT if p.suffix == ".md"]


def test_front_page_is_short():
    assert len((REPO / "README.md").read_text()) <= 12_000


def test_nothing_points_outside_the_repository():
    outside = re.compile(r"shared/(SPEC|DESIGN)|SPEC\.md|DESIGN\.md|SPEC §|DESIGN principle")
    hits = [f"{p.relative_to(REPO)}:{i}" for p in TEXT if p.name != "test_docs.py"
            for i, line in enumerate(p.read_text().splitlines(), 1) if outside.search(line)]
    assert not hits, hits


def headings(doc):
    return {m.group(1) for m in re.finditer(r"^#+ ([0-9]+(?:\.[0-9]+)*)[. ]", doc.read_text(), re.M)}


def test_every_section_citation_exists():
    cited = [(p, m.group(1), m.group(2)) for p in TEXT
             for m in re.finditer(r"docs/([a-z0-9_]+\.md) §([0-9]+(?:\.[0-9]+)*)", p.read_text())]
    assert len(cited) > 50  # the code cites its documentation throughout
    missing = [f"{p.relative_to(REPO)}: docs/{doc} §{sec}" for p, doc, sec in cited
               if not (REPO / "docs" / doc).is_file() or sec not in headings(REPO / "docs" / doc)]
    assert not missing, missing
    principles = re.findall(r"^(\d+)\. \*\*", (REPO / "docs/design.md").read_text(), re.M)
    for p in TEXT:
        for n in re.findall(r"docs/design\.md principle (\d+)", p.read_text()):
            assert n in principles, f"{p.relative_to(REPO)}: principle {n}"


def test_every_relative_link_resolves():
    broken = []
    for p in MARKDOWN:
        for target in re.findall(r"\]\(([^)\s]+)\)", p.read_text()):
            path = target.split("#")[0]
            if path and not re.match(r"[a-z]+:", path) and not (p.parent / path).exists():
                broken.append(f"{p.relative_to(REPO)} -> {target}")
    assert not broken, broken


def readme_commands():
    """The python and torchrun command lines of the README's bash blocks, comments dropped."""
    blocks = re.findall(r"```bash\n(.*?)```", (REPO / "README.md").read_text(), re.S)
    lines = [line.split(" #")[0].strip() for block in blocks for line in block.splitlines()]
    commands = []
    for line in lines:
        for part in line.split("&&"):
            words = shlex.split(part)
            if words and words[0] in ("python", "torchrun") and words[1:2] != ["-m"]:
                commands.append(words)
    return commands


@pytest.mark.parametrize("words", readme_commands(), ids=" ".join)
def test_readme_command_starts(words):
    """Its script and config files exist and its arguments parse: run with --help (which reads the config files and
    the variant but trains nothing). The planner runs for real: it trains nothing either."""
    args = words[1:]
    if words[0] == "torchrun":
        args = [a for a in args if not a.startswith("--") or args.index(a) > next(
            i for i, w in enumerate(args) if w.endswith(".py"))]
    script = next(a for a in args if a.endswith(".py"))
    assert (REPO / script).is_file(), script
    for config in (a for a in args if a.startswith("config/")):
        assert (REPO / config).is_file(), config
    if args[args.index(script) + 1:args.index(script) + 2] == ["plan"]:
        run(args)
    else:
        assert run([*args, "--help"]).stdout.startswith(("usage: python", "usage: "))
