"""``python -m app`` and the ``ollama-metrics`` program: the CLI (``build/entry.py``, the
frozen exe, runs ``run`` too)."""

import sys


def own_process() -> None:
    """What only the program's own process does (never a test process)."""
    # FastAPI imports ``pydantic.v1`` (1 MB of RSS for the process's life) only to ask
    # whether a route's types are pydantic v1 models, and takes an unimportable one as
    # "none". Nothing of ours is. Only here, in the program's own process: a test process
    # holds clients (openai, anthropic) that may import it.
    sys.modules.setdefault("pydantic.v1", None)  # type: ignore[arg-type]


def run() -> int:
    """The program's entry (``python -m app``, ``ollama-metrics``, the frozen exe)."""
    own_process()
    from app.analytics.migrate import CHILD_COMMAND

    if sys.argv[1:2] == [CHILD_COMMAND]:  # not a command for people: SqlStore.start's child
        from app.analytics.sql import migration_child

        return migration_child()
    from app.cli import main

    return main()


if __name__ == "__main__":
    sys.exit(run())
