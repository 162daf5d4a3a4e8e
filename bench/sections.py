"""Each benchmark owns one section of ``bench/results.md``, between its two marker comments: replaced in place when
present, otherwise inserted before a heading (or appended)."""

from __future__ import annotations

from pathlib import Path


def replace_section(path: Path, section: str, begin: str, end: str, *, before: str | None = None) -> None:
    """Write ``section`` (which starts with ``begin`` and ends with ``end``) into ``path`` in place of the one
    between those markers; a file without them gets it before the heading ``before`` if there is one, else at its
    end. The rest of the file is kept as it is."""
    text = path.read_text(encoding="utf-8") if path.is_file() else "# Benchmark results\n"
    section = section.rstrip("\n")
    if begin in text and end in text:
        start, stop = text.index(begin), text.index(end, text.index(begin)) + len(end)
        text = text[:start] + section + text[stop:]
    elif before is not None and before in text:
        at = text.index(before)
        text = text[:at] + section + "\n\n" + text[at:]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    path.write_text(text, encoding="utf-8")
