"""Print the project's Windows wheel set, one requirement a line, for scripts/ci-windows.sh.

    .venv/bin/python scripts/windows/wheel_set.py pyproject.toml pyinstaller pywin32 pip

The roots are the ``[project] dependencies`` of pyproject.toml plus the names given. The
closure is walked through the metadata of the packages installed in the running (Linux)
environment, with every environment marker evaluated for 64-bit Windows CPython 3.11: so
``uvicorn[standard]`` brings httptools and watchfiles but not uvloop, psycopg brings
tzdata, PyInstaller brings pefile and pywin32-ctypes. A package installed here is pinned
to the version installed here, which the Linux test suite ran against; one that is not
(the Windows-only ones) gets the version range its dependents ask for. ``pip download
--platform win_amd64`` cannot do this walk itself: it evaluates markers for the machine it
runs on. The Windows pip's ``install --no-index`` later checks that the set is complete.
"""

from __future__ import annotations

import sys
import tomllib
from importlib import metadata

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

WINDOWS = {
    **default_environment(),
    "os_name": "nt",
    "sys_platform": "win32",
    "platform_system": "Windows",
    "platform_machine": "AMD64",
    "platform_release": "10",
    "platform_version": "10.0.19045",
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
    "python_version": "3.11",
    "python_full_version": "3.11.9",
    "implementation_version": "3.11.9",
}


def applies(requirement: Requirement, extra: str = "") -> bool:
    marker = requirement.marker
    return marker is None or marker.evaluate({**WINDOWS, "extra": extra})


def wheel_set(roots: list[str]) -> list[str]:
    pinned: dict[str, str] = {}  # installed here: this version
    ranges: dict[str, SpecifierSet] = {}  # not installed here (Windows-only): any allowed
    pending = [Requirement(text) for text in roots]
    walked: set[tuple[str, frozenset[str]]] = set()
    while pending:
        requirement = pending.pop()
        if not applies(requirement):
            continue
        name = canonicalize_name(requirement.name)
        try:
            distribution = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            ranges[name] = ranges.get(name, SpecifierSet()) & requirement.specifier
            continue
        pinned[name] = distribution.version
        if (name, frozenset(requirement.extras)) in walked:
            continue
        walked.add((name, frozenset(requirement.extras)))
        for text in distribution.requires or []:
            needed = Requirement(text)
            if any(applies(needed, extra) for extra in ["", *requirement.extras]):
                needed.marker = None
                pending.append(needed)
    return sorted(
        [f"{name}=={version}" for name, version in pinned.items()]
        + [f"{name}{specifier}" for name, specifier in ranges.items()]
    )


def main() -> None:
    pyproject, *extra_roots = sys.argv[1:]
    with open(pyproject, "rb") as file:
        roots = tomllib.load(file)["project"]["dependencies"]
    print("\n".join(wheel_set([*roots, *extra_roots])))


if __name__ == "__main__":
    main()
