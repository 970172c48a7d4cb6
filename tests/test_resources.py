"""The package's non-Python files are found inside the installed package (guard/resources.py)."""

from __future__ import annotations

import fnmatch
import tomllib
from importlib.resources import files
from pathlib import Path

import pytest

from guard import resources
from guard.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    ("folder", "expected"),
    [
        (resources.followup_templates, {"followup.en.j2", "holding.escalate.zh.j2", "holding.review.en.j2"}),
        (resources.admin_templates, {"base.html", "login.html", "queue.html"}),
        (resources.admin_static, {"admin.css", "admin.js"}),
        (resources.migrations, {"env.py", "script.py.mako", "versions"}),
    ],
)
def test_each_folder_is_inside_the_package_and_holds_its_files(folder: object, expected: set[str]) -> None:
    assert callable(folder)
    path = folder()
    assert isinstance(path, Path) and path.is_dir()
    assert expected <= {p.name for p in path.iterdir()}
    package = Path(str(files("guard")))
    assert path.relative_to(package)  # found through the package, not a path beside the source tree


def test_in_a_checkout_the_package_folders_are_the_top_level_ones() -> None:
    if not (ROOT / "templates").is_dir():
        pytest.skip("not a checkout")
    assert resources.followup_templates().resolve() == (ROOT / "templates" / "followups").resolve()
    assert resources.migrations().resolve() == (ROOT / "migrations").resolve()
    versions = sorted(p.name for p in (ROOT / "migrations" / "versions").glob("*.py"))
    assert versions == sorted(p.name for p in (resources.migrations() / "versions").glob("*.py"))


def test_a_missing_folder_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="guard/templates/nope is missing"):
        resources.package_dir("templates", "nope")


def test_every_data_file_of_the_package_is_package_data() -> None:
    """A file in guard/ that is not Python (a fitted model, a calibration, a script of the admin)
    must match a package-data pattern of pyproject.toml, or the wheel goes without it."""
    if not (ROOT / "pyproject.toml").is_file():
        pytest.skip("not a checkout")
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    patterns = setuptools["package-data"]["guard"]
    package = ROOT / "guard"
    linked = [p for p in package.iterdir() if p.is_symlink()]  # templates/, migrations/: their own patterns
    data = [
        p.relative_to(package).as_posix()
        for p in package.rglob("*")
        if p.is_file()
        and p.suffix not in {".py", ".pyc"}
        and not any(d in p.parents for d in linked)
        and "__pycache__" not in p.parts
    ]
    assert "issues/model.json" in data
    unshipped = [name for name in data if not any(_glob_matches(name, pat) for pat in patterns)]
    assert unshipped == []


def _glob_matches(name: str, pattern: str) -> bool:
    """``name`` matches the package-data glob ``pattern`` as setuptools reads it (a "*" within one folder)."""
    names, pats = name.split("/"), pattern.split("/")
    return len(names) == len(pats) and all(
        fnmatch.fnmatchcase(n, p) for n, p in zip(names, pats, strict=True)
    )


def test_the_package_data_globs_stay_within_a_folder() -> None:
    assert _glob_matches("issues/model.json", "issues/*.json")
    assert not _glob_matches("issues/model.json", "*.json")
