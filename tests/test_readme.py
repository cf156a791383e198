"""The README stays short and true: its links lead somewhere, its commands run, what it names
exists.

Commands of the README's ```bash blocks run in their cheap form: a Python script with ``--help``
(in this process, once per script), ``make <target>`` as ``make -n <target>``. Commands that
download or install (:data:`NOT_RUN`) are not run; a command of any other kind fails the test
until it is given a cheap form here or added to that list with its reason.
"""

import functools
import glob
import os
import re
import shlex
import sys

import pytest
from conftest import REPO_ROOT, run_script

README = os.path.join(REPO_ROOT, "README.md")
DOCS = sorted(glob.glob(os.path.join(REPO_ROOT, "docs", "*.md")))
MAX_README_LINES = 250

# Commands not run, by their first word (or first two), and why.
NOT_RUN = {
    "git clone": "downloads a repository",
    "wget": "downloads a file",
    "pip": "installs packages",
    "python -m pip": "installs packages",
    "python -m pytest": "the test suite itself",
    "python -c": "an import check of the installation (the test suite imports both)",
    "mkdir": "makes a folder",
    "cd": "changes the folder",
    "zip": "packs files",
}
SCRIPT = re.compile(r"^python (?P<script>\S+\.py)\b")
ENV_ASSIGNMENT = re.compile(r"^[A-Z_][A-Z0-9_]*=\S*$")
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
REPO_PATH = re.compile(
    r"(?<![\w/.-])((?:tools|demo|datasets|examples|pointrend_sem)/[\w/]+\.(?:py|sh))"
)
CONFIG = re.compile(r"(?<![\w/.-])(configs/[\w.-]+\.yaml)")


def read(path) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


def bash_blocks(text) -> list:
    """The contents of the ```bash blocks of a markdown text."""
    return re.findall(r"^```bash\n(.*?)^```", text, re.DOTALL | re.MULTILINE)


def commands(block) -> list:
    """The commands of a bash block: continuation lines joined, comments and leading environment
    assignments (``VAR=value cmd``) left out."""
    joined = re.sub(r"\\\n\s*", " ", block)
    result = []
    for line in joined.splitlines():
        line = line.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        words = line.split()
        while words and ENV_ASSIGNMENT.match(words[0]):
            words.pop(0)
        if words:
            result.append(" ".join(words))
    return result


def readme_commands() -> list:
    return [c for block in bash_blocks(read(README)) for c in commands(block)]


def not_run_reason(command):
    words = command.split()
    for n in (3, 2, 1):
        reason = NOT_RUN.get(" ".join(words[:n]))
        if reason:
            return reason
    return None


def github_anchor(heading) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = heading.strip().lower().replace("`", "")
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


@functools.lru_cache(maxsize=None)
def anchors(path) -> set:
    text = re.sub(r"^```.*?^```", "", read(path), flags=re.DOTALL | re.MULTILINE)
    return {github_anchor(h) for h in re.findall(r"^#{1,6} (.+)$", text, re.MULTILINE)}


def test_readme_is_short():
    with open(README, encoding="utf-8") as f:
        lines = f.read().splitlines()
    assert (
        len(lines) <= MAX_README_LINES
    ), f"README.md has {len(lines)} lines, at most {MAX_README_LINES}: move details to docs/"


@pytest.mark.parametrize(
    "path", [README, *DOCS], ids=lambda p: os.path.relpath(p, REPO_ROOT).replace(os.sep, "/")
)
def test_relative_links_lead_to_files_and_headings(path):
    assert DOCS, "docs/ has no .md files"
    broken = []
    for target in LINK.findall(read(path)):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto:, ...
            continue
        file_part, _, anchor = target.partition("#")
        resolved = (
            os.path.normpath(os.path.join(os.path.dirname(path), file_part)) if file_part else path
        )
        if not os.path.exists(resolved):
            broken.append(f"{target}: no file {os.path.relpath(resolved, REPO_ROOT)}")
        elif anchor and resolved.endswith(".md") and anchor not in anchors(resolved):
            broken.append(
                f"{target}: no heading #{anchor} in {os.path.relpath(resolved, REPO_ROOT)}"
            )
    assert not broken, f"{os.path.relpath(path, REPO_ROOT)}: " + "; ".join(broken)


def test_every_readme_command_has_a_cheap_form_or_a_reason():
    unknown = [
        c
        for c in readme_commands()
        if not (SCRIPT.match(c) or c.startswith("make ") or c.startswith("bash "))
        and not not_run_reason(c)
    ]
    assert not unknown, f"README commands with no cheap form and no NOT_RUN reason: {unknown}"


def test_scripts_and_configs_named_in_readme_and_docs_exist():
    missing = []
    for path in [README, *DOCS]:
        text = read(path)
        named = set(REPO_PATH.findall(text)) | set(CONFIG.findall(text))
        for block in bash_blocks(text):
            for command in commands(block):
                m = SCRIPT.match(command) or re.match(r"^bash (?P<script>\S+\.sh)\b", command)
                if m:
                    named.add(m["script"])
        rel = os.path.relpath(path, REPO_ROOT)
        missing += [
            f"{rel}: {n}" for n in sorted(named) if not os.path.exists(os.path.join(REPO_ROOT, n))
        ]
    assert not missing, f"named but absent: {missing}"


def test_readme_names_the_configs_of_its_tables():
    """The recipe and model-zoo tables name configs; each must exist (checked above) and there
    must be some, or the pattern no longer matches how the README names them."""
    assert len(set(CONFIG.findall(read(README)))) >= 10


README_SCRIPTS = sorted({SCRIPT.match(c)["script"] for c in readme_commands() if SCRIPT.match(c)})


@pytest.mark.parametrize("script", README_SCRIPTS)
def test_readme_script_runs_with_help(script):
    """``python <script> --help``: the script imports and parses its options (argparse exits 0,
    which run_script reports as return code 0)."""
    proc = run_script([sys.executable, script, "--help"])
    assert proc.returncode == 0, f"python {script} --help: {proc.returncode}\n{proc.stderr[-3000:]}"
    assert "usage:" in proc.stdout, proc.stdout[-2000:]


README_MAKE_TARGETS = sorted({c.split()[1] for c in readme_commands() if c.startswith("make ")})


def test_readme_make_targets_are_in_the_makefile():
    """Each ``make`` target the README names is a target of the Makefile (their ``make -n`` runs
    in tests/test_makefile.py)."""
    with open(os.path.join(REPO_ROOT, "Makefile")) as f:
        targets = {line.split(":")[0] for line in f if re.match(r"^[\w-]+:", line)}
    assert set(README_MAKE_TARGETS) <= targets, (README_MAKE_TARGETS, targets)


def test_readme_has_commands_to_check():
    """Guards the parsing above: the README's blocks hold the two make targets and scripts."""
    assert README_MAKE_TARGETS == ["app", "demo", "test"], README_MAKE_TARGETS
    assert "train_net.py" in README_SCRIPTS, README_SCRIPTS
    assert all(shlex.split(c) for c in readme_commands())
