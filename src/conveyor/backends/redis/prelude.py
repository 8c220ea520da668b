"""Each script with only the helpers of `_lib.lua` it uses.

Redis runs a script's whole text on every call, so every helper in the prelude is a
closure (and FIELDS a 26-string table) built again each time: the whole prelude cost
4.7-8.4 us of server time per call here, against 3.0-4.7 us for an empty script with
the same arguments. A single enqueue is one call, so it paid that in full.
"""

from __future__ import annotations

import re
from importlib import resources

# A top-level definition: `local function name(` or `local name =` at the start of a line.
_DEFINITION = re.compile(r"^local (?:function )?([A-Za-z_][A-Za-z0-9_]*)", re.MULTILINE)


def _blocks(lib: str) -> tuple[str, list[tuple[str, str]]]:
    """The prelude's opening comment, then (name, text) per definition, in order; a
    definition's text runs from the comment lines just above it to the next one's."""
    found = list(_DEFINITION.finditer(lib))
    cuts = [_comment_start(lib, m.start()) for m in found]
    head = lib[: cuts[0]] if cuts else lib
    ends = [*cuts[1:], len(lib)]
    blocks = [(m.group(1), lib[cut:end]) for m, cut, end in zip(found, cuts, ends, strict=True)]
    return head, blocks


def _comment_start(text: str, start: int) -> int:
    """Where the run of `--` comment lines directly above `start` begins."""
    lines_start = start
    while lines_start > 0:
        previous = text.rfind("\n", 0, lines_start - 1) + 1
        if not text[previous:lines_start].startswith("--"):
            break
        lines_start = previous
    return lines_start


# A `--` comment to the end of its line: no script has `--` inside a string.
_COMMENT = re.compile(r"--.*$", re.MULTILINE)


def _uses(text: str, name: str) -> bool:
    """Whether `text`'s code (not its comments) names `name`: a helper named in a comment,
    as "resent" or "batch" in prose, would carry it and all it needs for nothing."""
    code = _COMMENT.sub("", text)
    return re.search(rf"(?<![A-Za-z0-9_.:]){re.escape(name)}(?![A-Za-z0-9_])", code) is not None


def trimmed(lib: str, body: str) -> str:
    """`lib`'s definitions that `body` needs, directly or through each other, then `body`."""
    head, blocks = _blocks(lib)
    needed: set[str] = set()
    frontier = [body]
    while frontier:
        text = frontier.pop()
        for name, block in blocks:
            if name not in needed and _uses(text, name):
                needed.add(name)
                frontier.append(block)
    kept = "".join(block for name, block in blocks if name in needed)
    return head + kept + "\n" + body


def db_suffix(db: int) -> str:
    """What the pub/sub channels of database `db` end with (see DB in _lib.lua): channels
    span a server's databases, so two apps on databases 1 and 2 would wake each other."""
    return f"@{db}" if db else ""


def load(name: str, db: int = 0) -> str:
    """The text Redis runs for script `name` (`scripts/<name>.lua`) on database `db`."""
    folder = resources.files("conveyor.backends.redis") / "scripts"
    body = trimmed((folder / "_lib.lua").read_text(), (folder / f"{name}.lua").read_text())
    return f"local DB = '{db_suffix(db)}'\n{body}"
