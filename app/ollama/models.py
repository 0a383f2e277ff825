"""Model names as Ollama resolves them."""

from __future__ import annotations


def normalise_model(name: str) -> str:
    """The name Ollama reports for ``name``: a missing tag means ``:latest``.

    ``llama3.2`` → ``llama3.2:latest``; ``hf.co/org/repo:Q4`` stays; an empty name stays empty.
    Surrounding whitespace is ignored, as Ollama's name parser does.
    """
    name = name.strip()
    if not name:
        return ""
    last = name.rsplit("/", 1)[-1]
    if ":" in last or "@" in last:
        return name
    return name + ":latest"


def recorded_model(name: str, status: int) -> str:
    """The model a record names: as Ollama resolves it, or as sent when Ollama refused the
    request (400, 404), so that a name Ollama rejected is not given a ``:latest`` it never had."""
    return name if status in (400, 404) else normalise_model(name)
