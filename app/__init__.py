"""Ollama Metrics Proxy: a transparent proxy in front of Ollama that measures every request."""

__version__ = "0.1.0"
