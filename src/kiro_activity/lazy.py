"""Modules loaded at the first use of one of their names.

DuckDB, pyarrow and boto3 cost a process 60 MiB and more. The command's module (:mod:`.cli`)
and what it needs at import (:mod:`.settings`) refer to the modules that bring them in through
:func:`module`, so that a process that only imports those, such as a batch checker process
(spawn imports the main module of its parent), does not load them.
"""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType


def module(name: str) -> ModuleType:
    """The module ``name`` (absolute), as it is if already imported, else run at the first
    access to one of its attributes (:class:`importlib.util.LazyLoader`)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.find_spec(name)
    if spec is None or spec.loader is None:
        raise ModuleNotFoundError(f"no module named {name!r}", name=name)
    spec.loader = importlib.util.LazyLoader(spec.loader)
    lazy = importlib.util.module_from_spec(spec)
    sys.modules[name] = lazy
    spec.loader.exec_module(lazy)
    return lazy
