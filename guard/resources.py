"""The guard's files that are not Python: templates, migrations and the admin's static files.

They are package data of ``guard`` and are found through ``importlib.resources``, so they are the
same wherever the package is installed (a wheel in any venv, or the editable install of a checkout).
In the repository ``templates/`` and ``migrations/`` are top-level folders; ``guard/templates`` and
``guard/migrations`` are symbolic links to them, which is how the wheel and the editable install
carry them inside the package.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from guard.errors import ConfigError


def package_dir(*parts: str) -> Path:
    """A folder of the installed ``guard`` package, as a filesystem path (Jinja2, Alembic and
    Starlette's StaticFiles read real folders)."""
    found = files("guard").joinpath(*parts)
    if not isinstance(found, Path) or not found.is_dir():
        raise ConfigError(f"guard/{'/'.join(parts)} is missing from the installed package ({found})")
    return found


def followup_templates() -> Path:
    """The default follow-up and holding-message templates (``<kind>.<locale>.j2``)."""
    return package_dir("templates", "followups")


def admin_templates() -> Path:
    """The admin pages' Jinja2 templates."""
    return package_dir("templates", "admin")


def admin_static() -> Path:
    """The admin pages' CSS and scripts."""
    return package_dir("admin", "static")


def migrations() -> Path:
    """Alembic's script location: ``env.py`` and ``versions/``."""
    return package_dir("migrations")
