"""Every Python example in README.md and docs/*.md runs as written.

Each ```python (or ```py) block runs in a fresh interpreter whose working folder holds what the
examples expect: `demo_out/` as `filterdb demo --quick` builds it (its DB is `demo_out/db`). A block
that is not meant to run must not be fenced as Python; no Python block is skipped.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = ["README.md", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md"))]
PYTHON_FENCES = {"python", "py", "python3"}
FENCE = re.compile(r"^(?P<indent>[ ]*)(?P<fence>`{3,}|~{3,})\s*(?P<info>[^`]*)$")
SNIPPET_TIMEOUT_S = 300


@dataclass(frozen=True)
class Block:
    document: str
    line: int  # 1-based line of the opening fence
    language: str
    code: str

    @property
    def id(self) -> str:
        return f"{self.document}:{self.line}"


def fenced_blocks(text: str, document: str = "<text>") -> list[Block]:
    """The fenced code blocks of a Markdown text (``` or ~~~, at least three, closed by the same
    character at least as long; indented fences too, as in list items), with their language and
    opening line; a block's lines lose the fence's indentation."""
    blocks, lines = [], text.splitlines()
    i = 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        fence, indent = opening["fence"], len(opening["indent"])
        language = opening["info"].split()[0].lower() if opening["info"].strip() else ""
        closing = re.compile(rf"^[ ]*{re.escape(fence[0])}{{{len(fence)},}}\s*$")
        body, j = [], i + 1
        while j < len(lines) and not closing.match(lines[j]):
            line = lines[j]
            body.append(line[min(indent, len(line) - len(line.lstrip(" "))):])
            j += 1
        blocks.append(Block(document, i + 1, language, "\n".join(body) + "\n"))
        i = j + 1
    return blocks


def python_blocks() -> list[Block]:
    found = []
    for document in DOCUMENTS:
        path = ROOT / document
        if path.is_file():
            blocks = fenced_blocks(path.read_text(encoding="utf-8"), document)
            found += [b for b in blocks if b.language in PYTHON_FENCES]
    return found


BLOCKS = python_blocks()


def test_fences_are_read_like_markdown():
    text = "\n".join([
        "```bash", "echo no", "```",
        "```python", "a = 1", "````not a closing fence", "```",
        "  ~~~~ Py title", "  b = 2", "    c = 3", "  ~~~~",
        "- a list item:", "", "    ```python", "    d = 4", "    ```",
    ])
    blocks = fenced_blocks(text, "x.md")
    assert [(b.line, b.language) for b in blocks] == [(1, "bash"), (4, "python"), (8, "py"), (14, "python")]
    assert blocks[1].code == "a = 1\n````not a closing fence\n"
    assert blocks[2].code == "b = 2\n  c = 3\n"
    assert blocks[3].code == "d = 4\n"


def test_the_docs_have_python_examples_to_run():
    """Guards the collection itself: docs/shifts.md's Python section must be found."""
    assert any(b.document == "docs/shifts.md" for b in BLOCKS), [b.id for b in BLOCKS]


@pytest.fixture(scope="session")
def docs_folder(quick_demo):
    """A working folder with `demo_out/` as the quick demo builds it (a few models; `demo_out/db`)."""
    out, status = quick_demo
    assert status == 0, "the quick demo failed: no DB for the examples"
    return out.parent


@pytest.mark.parametrize("block", BLOCKS, ids=[b.id for b in BLOCKS])
def test_python_example_runs_as_written(block: Block, docs_folder: Path, tmp_path: Path):
    env = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"}  # its own local Ray
    env.update(HF_HUB_OFFLINE="1", PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])))
    # Blank lines up to the fence: a traceback's line numbers are the document's, next to its text.
    script = tmp_path / (block.document.replace("/", "_") + ".py")
    script.write_text("\n" * block.line + block.code, encoding="utf-8")
    try:
        done = subprocess.run([sys.executable, str(script)], cwd=docs_folder, env=env, capture_output=True,
                              text=True, timeout=SNIPPET_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{block.id}: the example ran longer than {SNIPPET_TIMEOUT_S} s")
    assert done.returncode == 0, (
        f"the Python example at {block.id} (fence on line {block.line}) exited with {done.returncode}; "
        f"line numbers below are {block.document}'s:\n{done.stderr[-4000:]}"
    )
