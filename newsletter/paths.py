"""Where the project's non-Python resources live.

In a checkout (or an editable install) they are the top-level ``templates/`` and ``alembic/``
folders; a wheel carries them inside the package as ``_templates`` and ``_alembic``.
"""

from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent


def resource_dir(name: str) -> Path:
    for candidate in (PACKAGE_DIR / f"_{name}", PACKAGE_DIR.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"the {name}/ folder is missing from this installation ({PACKAGE_DIR.parent})")
