"""``python -m app``: the ``ollama-metrics`` CLI (``build/entry.py`` runs ``run`` too)."""

import sys


def run() -> int:
    from app.analytics.migrate import CHILD_COMMAND

    if sys.argv[1:2] == [CHILD_COMMAND]:  # not a command for people: SqlStore.start's child
        from app.analytics.sql import migration_child

        return migration_child()
    from app.cli import main

    return main()


if __name__ == "__main__":
    sys.exit(run())
