"""Request classification, beside ``app.ollama``'s wire knowledge: prompt categories and
client applications.

The exchange tap hands the prompt of each inference request to a :class:`Categoriser`, and
the headers of every request to a :class:`ClientApps`; each answers with one of a bounded
set of short names, which the record carries to the metrics (a label value) and to
analytics (a column and a filter).

- ``categoriser``: the rules (``rules.json`` here, or ``PROMPT_CATEGORY_RULES``), their
  validation and the match itself.
- ``prefilter``: how most patterns are never searched (literal gates before each regex).
- ``apps``: the client application, from ``X-Client-Name`` / ``X-Title`` / ``User-Agent``.

Must not import: anything of ``app`` but itself (it is handed prompts and returns names).
"""

from app.categories.apps import ClientApps
from app.categories.categoriser import Categoriser

__all__ = ["Categoriser", "ClientApps"]
