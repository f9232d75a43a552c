"""The task catalogue file: parsing and the errors a bad file gets."""

from __future__ import annotations

from pathlib import Path

import pytest

from relayq_core.catalog import CatalogError, load_catalog


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "tasks.toml"
    path.write_text(text)
    return path


def test_queues_default_and_per_task(tmp_path: Path) -> None:
    catalog = load_catalog(
        write(
            tmp_path,
            'default_queue = "main"\n[tasks."a.b"]\n[tasks."mail.send"]\nqueue = "mail"\n',
        )
    )
    assert catalog.tasks["a.b"].queue == "main"
    assert catalog.queues() == ["main", "mail"]


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "tasks: at least one"),
        ('[tasks."Bad Name"]\n', 'tasks."Bad Name": task names are dotted'),
        ('[tasks."a.b"]\nqueue = "no spaces allowed"\n', 'tasks."a.b".queue: not a valid queue'),
        ('[tasks."a.b"]\ncolour = "red"\n', "unknown keys ['colour']"),
        ("tasks = [", "not valid TOML"),
    ],
)
def test_bad_files_name_file_key_and_problem(tmp_path: Path, text: str, problem: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(CatalogError) as err:
        load_catalog(path)
    assert str(path) in str(err.value)
    assert problem in str(err.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="file not found"):
        load_catalog(tmp_path / "nope.toml")
