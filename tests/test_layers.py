"""The layer boundaries of DESIGN.md §2, enforced: core code never touches I/O or a clock."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "voicebot"

#: Core modules: pure logic, testable with plain function calls.
CORE_MODULES = ["errors", "events", "protocol", "audio", "dspmetrics", "jitter", "pacing"]
#: Of those, the ones that may use nothing but the standard library.
STDLIB_ONLY = {"errors", "events", "protocol"}
FORBIDDEN = {"asyncio", "websockets", "aiohttp", "time", "socket", "uvloop", "selectors", "threading"}


def imported_roots(path: Path) -> set[str]:
    """Top-level names of every module imported anywhere in ``path`` (relative imports resolved)."""
    roots: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            roots.add("voicebot" if node.level else (node.module or "").split(".")[0])
    return roots


@pytest.mark.parametrize("module", CORE_MODULES)
def test_core_module_never_imports_io_or_clock(module: str) -> None:
    forbidden = imported_roots(PACKAGE / f"{module}.py") & FORBIDDEN
    assert not forbidden, f"voicebot/{module}.py imports {sorted(forbidden)}"


@pytest.mark.parametrize("module", sorted(STDLIB_ONLY))
def test_protocol_layer_is_stdlib_only(module: str) -> None:
    outside = {
        name for name in imported_roots(PACKAGE / f"{module}.py") if name not in sys.stdlib_module_names
    } - {"voicebot"}
    assert not outside, f"voicebot/{module}.py imports third-party {sorted(outside)}"


def test_checker_sees_forbidden_imports(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text("import os\nfrom time import monotonic\ndef f():\n    import asyncio.tasks\n")
    assert {"time", "asyncio"} <= imported_roots(sample)
