"""The optional peer column: LiteLLM's proxy in its own virtualenv (never the project's).

``bench/.venv-litellm`` (or ``$BENCH_LITELLM_VENV``) is created with ``pip install
'litellm[proxy]' prometheus_client`` on first use. The model ``llama3.2`` is configured as
``ollama_chat/llama3.2`` on the generator upstream, with the Prometheus callback on, so
LiteLLM turns each OpenAI chat request into a native ``/api/chat`` stream and back.
Whatever goes wrong is returned as the reason the column is "not measured".
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from bench import procs

VENV = Path(os.environ.get("BENCH_LITELLM_VENV", Path(__file__).with_name(".venv-litellm")))
PACKAGES = ("litellm[proxy]", "prometheus_client")


class NotMeasured(Exception):
    """LiteLLM cannot be installed or started here; the message says why."""


def ensure_installed(log: object) -> Path:
    exe = VENV / "bin" / "litellm"
    if exe.exists():
        return exe
    print(f"litellm: installing {' '.join(PACKAGES)} into {VENV} (once)", flush=True)
    try:
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True, capture_output=True)
        subprocess.run(
            [str(VENV / "bin" / "pip"), "install", "-q", *PACKAGES],
            check=True,
            capture_output=True,
            text=True,
            timeout=900,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        detail = getattr(exc, "stderr", "") or ""
        raise NotMeasured(f"pip install failed: {exc} {detail[-300:]}".strip()) from exc
    if not exe.exists():
        raise NotMeasured(f"no {exe} after pip install")
    return exe


def version() -> str:
    python = VENV / "bin" / "python"
    done = subprocess.run(
        [str(python), "-c", "import importlib.metadata as m; print(m.version('litellm'))"],
        capture_output=True,
        text=True,
        check=False,
    )
    return done.stdout.strip() or "unknown"


@contextlib.contextmanager
def server(upstream: str, log: object) -> Iterator[procs.Server]:
    exe = ensure_installed(log)
    with tempfile.TemporaryDirectory(prefix="bench-litellm-") as work:
        config = Path(work) / "config.yaml"
        config.write_text(
            "model_list:\n  - model_name: llama3.2\n    litellm_params:\n"
            f"      model: ollama_chat/llama3.2\n      api_base: {upstream}\n"
            'litellm_settings:\n  callbacks: ["prometheus"]\n'
        )
        port = procs.free_port()
        env = {**os.environ, "LITELLM_DANGEROUSLY_PERMIT_WEAK_OR_UNSET_MASTER_KEY": "true"}
        env |= {"LITELLM_LOG": "ERROR", "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
        command = [str(exe), "--config", str(config), "--host", "127.0.0.1", "--port", str(port)]
        try:
            with procs.started("litellm", command, port, env=env, timeout=180) as running:
                yield running
        except RuntimeError as exc:
            raise NotMeasured(str(exc).splitlines()[0]) from exc
