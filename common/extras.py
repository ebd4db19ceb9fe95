"""How to install an optional extra, said the way that works where bnrl came from (issue 28).

``pip install 'bnrl[video]'`` only works where pip can find bnrl by name (an index); from a
clone the extra is installed from the clone's directory. pip records where a package came from
in its ``direct_url.json`` (PEP 610), which tells the two apart; ``run.py`` run from a checkout
that was never installed is a clone too.
"""

from __future__ import annotations

import json
from importlib import metadata
from pathlib import Path
from urllib.parse import unquote, urlparse

_CHECKOUT = Path(__file__).resolve().parent.parent
"""The package's own directory: a clone when it holds ``pyproject.toml``."""


def install_hint(extra: str) -> str:
    """The pip command that adds ``extra`` to the bnrl that is running."""
    try:
        origin = json.loads(metadata.distribution("bnrl").read_text("direct_url.json") or "{}")
    except (metadata.PackageNotFoundError, ValueError):
        origin = {}
    url = urlparse(origin.get("url", ""))
    if url.scheme == "file" and Path(unquote(url.path), "pyproject.toml").is_file():
        editable = "-e " if origin.get("dir_info", {}).get("editable") else ""
        return f"pip install {editable}'{unquote(url.path)}[{extra}]'"  # installed from a clone
    if (_CHECKOUT / "pyproject.toml").is_file():  # run.py of a clone that was never installed
        return f"pip install -e '{_CHECKOUT}[{extra}]'"
    return f"pip install 'bnrl[{extra}]'"
