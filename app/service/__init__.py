"""Ollama's lifecycle for the wrapper: find the binary, run and supervise ``ollama serve``
on the upstream port, explain port conflicts in plain words."""
