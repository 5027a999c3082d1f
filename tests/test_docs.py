"""The repository documents itself: the front page stays short, every citation of docs/ in code, configs and reports
names a section that exists, every relative link resolves, nothing points at a document outside the repository, and
every command the README shows starts (its script and config files exist and its arguments parse), and the verdicts
the README and docs/results.md print are the comparison's (results/compare/table.json)."""
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


# the columns of the README's and docs/results.md's verdict tables, and the protocol each one reports
VERDICT_COLUMNS = {"tuned, equal FLOPs": "tuned", "4x longer": "longer", "equal tokens": "equal_tokens",
                   "Δ equal tokens": "equal_tokens", "Δ equal FLOPs": "equal_flops", "Δ tuned (headline)": "tuned",
                   "Δ 4x longer": "longer"}
DELTA = re.compile(r"([+−-]\d+\.(\d+))(?: ± (\d+\.\d+))?")


def markdown_tables(path):
    """Each table of a markdown file as a list of rows (lists of stripped cells), its header first."""
    tables, rows = [], []
    for line in path.read_text().splitlines() + [""]:
        if line.startswith("|"):
            if not set(line) <= set("|-: "):
                rows.append([c.strip() for c in line.strip().strip("|").split("|")])
        elif rows:
            tables.append(rows)
            rows = []
    return tables


@pytest.mark.parametrize("doc", ["README.md", "docs/results.md"])
def test_written_verdicts_are_the_comparisons(doc):
    """Every Δ (and ± se) the verdict tables print is one of results/compare/table.json's, rounded as printed, for a
    label of that row (a README row is a variant: its labels are the comparison's labels of that variant)."""
    import json
    import sys
    sys.path.insert(0, str(REPO / "results" / "compare"))
    import compare
    verdicts = json.loads((REPO / "results" / "compare" / "table.json").read_text())["verdicts"]
    checked = 0
    for header, *rows in markdown_tables(REPO / doc):
        columns = {i: VERDICT_COLUMNS[h] for i, h in enumerate(header) if h in VERDICT_COLUMNS}
        key = next((i for i, h in enumerate(header) if h in ("variant", "label")), None)
        if not columns or key is None:
            continue
        for row in rows:
            name = row[key].strip("`")
            labels = [l for l in verdicts if l == name or compare.label_spec(l)[1] == name]
            assert labels, f"{doc}: no comparison label for {name}"
            for i, protocol in columns.items():
                for value, decimals, se in DELTA.findall(row[i]):
                    found = [verdicts[l]["protocols"].get(protocol) for l in labels]
                    printed = {(f"{c['diff']:+.{len(decimals)}f}", f"{c['se']:.{len(decimals)}f}") for c in found if c}
                    value = value.replace("−", "-")
                    assert any(v == value and (not se or s == se) for v, s in printed), \
                        f"{doc}: {name}, {header[i]}: {value} ± {se or '-'} is not in table.json ({sorted(printed)})"
                    checked += 1
    assert checked > 20
