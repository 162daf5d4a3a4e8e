"""The README's fenced code blocks and the marks that say how each is tested.

Every block of code (bash, sh, python, sql) is preceded by an HTML comment, invisible on GitHub:

- ``<!-- runnable -->``: ``test_readme.py`` runs it as written (bash in a shell, python with the project's Python,
  sql through ``joor-pipeline sql``), in README order, in a fresh checkout on the built-in sandbox;
  ``<!-- runnable; skip "LINE": why -->`` leaves out the line whose command is LINE, or else the one line that
  starts with LINE (which must be there);
  ``<!-- runnable: joor-sandbox -->`` runs it against the project's JOOR sandbox on 127.0.0.1 standing in for JOOR
  (``JOOR_BASE_URL`` set, and ``...`` in ``JOOR_API_TOKEN=...`` its token);
- ``<!-- operator: STEP -->``: a step of *Running in production*, followed in order by the deployment test
  (``test_deployment_postgres.py``) on a fresh checkout, with the few placeholders it names replaced;
- ``<!-- example: why -->``: not run (real credentials, a cloud, the internet, or the development loop itself).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Final

REPO: Final = Path(__file__).resolve().parent.parent
README: Final = REPO / "README.md"

#: Languages whose blocks are commands or code, so must be marked. Output, TOML and YAML blocks are data.
CODE_LANGUAGES: Final = frozenset({"bash", "sh", "shell", "console", "python", "py", "sql"})

#: The steps of *Running in production* the deployment test follows, each marked ``<!-- operator: STEP -->``.
OPERATOR_STEPS: Final = ("install", "database", "home", "check", "services", "pool", "run")

_FENCE: Final = re.compile(r"^(?P<indent>\s*)(?P<fence>`{3,}|~{3,})\s*(?P<lang>[\w+-]*)\s*$")
_COMMENT: Final = re.compile(r"^\s*<!--\s*(?P<body>.*?)\s*-->\s*$")
_SKIP: Final = re.compile(r'skip\s+"(?P<line>[^"]+)"\s*(?::\s*(?P<why>[^;]*))?')


class ReadmeError(AssertionError):
    """A block is unmarked, marked in a way nobody reads, or its mark does not fit its text."""


@dataclass(frozen=True)
class Block:
    """One fenced block: where it opens (1-based line), its language, its text (dedented) and its mark."""

    line: int
    lang: str
    text: str
    mark: str | None

    @property
    def kind(self) -> str | None:
        """``runnable``, ``operator``, ``example``, or None when unmarked."""
        if self.mark is None:
            return None
        head = re.split(r"[:;]", self.mark, maxsplit=1)[0].strip()
        return head if head in {"runnable", "operator", "example"} else f"unknown mark {self.mark!r}"

    @property
    def argument(self) -> str:
        """What follows ``runnable:``, ``operator:`` or ``example:`` (up to a ``;``)."""
        assert self.mark is not None
        head, sep, rest = self.mark.partition(":")
        if not sep or ";" in head:
            return ""
        return rest.split(";", 1)[0].strip()

    @property
    def skipped(self) -> dict[str, str]:
        """The lines a runnable block leaves out (their start) and why."""
        if self.mark is None:
            return {}
        return {m["line"]: (m["why"] or "").strip() for m in _SKIP.finditer(self.mark)}

    def where(self) -> str:
        return f"README.md:{self.line} ({self.lang or 'no language'} block)"

    def commands(self) -> str:
        """The text to run: without the lines it skips (each skip must match exactly one line)."""
        lines = self.text.splitlines()
        for start, why in self.skipped.items():
            # the line whose command (before its comment) is exactly ``start``, else the one that starts with it
            matching = [n for n, line in enumerate(lines) if line.split(" #")[0].strip() == start.strip()]
            matching = matching or [n for n, line in enumerate(lines) if line.strip().startswith(start)]
            if len(matching) != 1:
                raise ReadmeError(f"{self.where()}: skip {start!r} matches {len(matching)} lines, not one")
            if not why:
                raise ReadmeError(f"{self.where()}: skip {start!r} does not say why")
            lines[matching[0]] = ""
        return "\n".join(lines) + "\n"


def blocks(path: Path = README) -> list[Block]:
    """Every fenced block of ``path``, with the HTML comment on the line before it, if any."""
    found: list[Block] = []
    lines = path.read_text(encoding="utf-8").splitlines()
    n = 0
    while n < len(lines):
        opening = _FENCE.match(lines[n])
        if not opening:
            n += 1
            continue
        indent, fence = opening["indent"], opening["fence"]
        before = _COMMENT.match(lines[n - 1]) if n else None
        body: list[str] = []
        end = n + 1
        while end < len(lines) and lines[end].strip() != fence:
            text = lines[end]
            body.append(text[len(indent) :] if text.startswith(indent) else text.lstrip())
            end += 1
        if end == len(lines):
            raise ReadmeError(f"README.md:{n + 1}: the block is never closed")
        found.append(Block(n + 1, opening["lang"], "\n".join(body), before["body"] if before else None))
        n = end + 1
    return found


def check_marks(found: list[Block]) -> None:
    """Every block of code is marked with a known mark; each operator step is marked exactly once."""
    problems = []
    for block in found:
        if block.mark is None and block.lang in CODE_LANGUAGES:
            problems.append(
                f"{block.where()} is not marked: <!-- runnable -->, <!-- operator: STEP --> or <!-- example: why --> "
                "on the line before it"
            )
        elif block.mark is not None and block.kind not in {"runnable", "operator", "example"}:
            problems.append(f"{block.where()}: {block.kind}")
        elif block.kind == "example" and not block.argument:
            problems.append(f"{block.where()}: an example says why it is not run (<!-- example: why -->)")
        elif block.kind == "operator" and block.argument not in OPERATOR_STEPS:
            problems.append(f"{block.where()}: operator step {block.argument!r} is none of {OPERATOR_STEPS}")
        elif block.kind == "runnable" and block.argument not in {"", "joor-sandbox"}:
            problems.append(f"{block.where()}: runnable {block.argument!r}: only joor-sandbox is known")
        elif block.kind == "runnable":
            try:
                block.commands()
            except ReadmeError as exc:
                problems.append(str(exc))
    steps = [block.argument for block in found if block.kind == "operator"]
    for step in OPERATOR_STEPS:
        if steps.count(step) != 1:
            problems.append(f"operator step {step!r} is marked {steps.count(step)} times, not once")
    if steps != [s for s in OPERATOR_STEPS if s in steps]:
        problems.append(f"the operator steps are marked in the order {steps}, not {list(OPERATOR_STEPS)}")
    if problems:
        raise ReadmeError("\n".join(problems))


def operator_step(step: str, found: list[Block] | None = None) -> Block:
    """The block of an operator step (exactly one: :func:`check_marks`)."""
    [block] = [b for b in (found or blocks()) if b.kind == "operator" and b.argument == step]
    return block


def replaced(block: Block, replacements: dict[str, str]) -> str:
    """The block's text with each placeholder replaced; ReadmeError if a placeholder is no longer in it."""
    text = block.text
    for old, new in replacements.items():
        if old not in text:
            raise ReadmeError(f"{block.where()} no longer contains {old!r}, which the deployment test replaces")
        text = text.replace(old, new)
    return text


#: What a checkout never holds (ignored by .gitignore): copied from a tree that is not a git work tree.
_NOT_CHECKED_OUT: Final = (".git", ".venv", "data", "dagster_home", "node_modules", "__pycache__", "*.pyc", ".*_cache")


def fresh_checkout(dest: Path) -> Path:
    """A copy of the working tree as a fresh clone of it would be: the files git tracks (as they are now, so
    uncommitted edits count) and the new ones it would add; nothing ignored (no .venv, data, dagster_home)."""
    dest.mkdir(parents=True, exist_ok=True)
    listed = subprocess.run(
        ["git", "-C", str(REPO), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        capture_output=True,
        check=False,
    )
    if listed.returncode != 0:  # not a git work tree (an unpacked archive): the tree without what git ignores
        shutil.copytree(REPO, dest, ignore=shutil.ignore_patterns(*_NOT_CHECKED_OUT), dirs_exist_ok=True)
    else:
        for name in sorted(set(listed.stdout.decode().split("\0")) - {""}):
            source = REPO / name
            if source.is_file():  # a tracked file deleted in the working tree is not in the clone either
                (dest / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, dest / name)
    # data/ is in the clone (its .gitkeep), empty.
    return dest
