"""The shape of the package: pure scoring and rendering, one module per IO boundary."""

from __future__ import annotations

import ast
from pathlib import Path

import newsletter

PACKAGE = Path(newsletter.__file__).parent
IO_MODULES = ("sqlalchemy", "httpx", "aiosmtplib", "smtplib", "newsletter.db", "newsletter.send", "newsletter.ingest.fetch",
              "requests", "socket", "urllib.request")


def imports_of(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


def test_score_and_render_never_touch_the_database_or_the_network() -> None:
    for folder in ("score", "render"):
        for path in (PACKAGE / folder).glob("*.py"):
            bad = {m for m in imports_of(path) if m.startswith(IO_MODULES)}
            assert not bad, f"{path.relative_to(PACKAGE)} imports {bad}"


def test_only_the_fetch_module_does_http_and_only_the_mailer_does_smtp() -> None:
    for path in PACKAGE.rglob("*.py"):
        imported = imports_of(path)
        if "httpx" in imported:
            assert path.name in {"fetch.py", "cli.py", "run.py"}, path  # cli/run only pass the client along
        if "aiosmtplib" in imported:
            assert path == PACKAGE / "send" / "mailer.py", path


def test_settings_are_read_only_at_entry_points() -> None:
    for path in PACKAGE.rglob("*.py"):
        source = path.read_text()
        if "load_settings(" in source and path.name != "settings.py":
            assert path.name == "cli.py", f"{path} loads settings; pass them down instead"
        assert "os.environ" not in source, f"{path} reads the environment directly"
