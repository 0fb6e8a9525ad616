"""The two dimensions of the dashboard's breakdown: the IDE and the programming language.

The report's CSV has neither, so the counters keep a second table at the grain (account, day,
user, IDE, language) beside the per-user-day one (:mod:`.counters`); both are fed by the same
amounts of the same events, so a breakdown always sums to the totals. Both values are sent by
the client, so they are bounded here to a known set: a client cannot grow the table with made-up
names, it gets ``other``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

#: ``userContext.ideCategory`` as the clients send it (their enum, docs/protocol.md)
IDES = frozenset({"JETBRAINS", "VSCODE", "CLI", "JUPYTER_MD", "JUPYTER_SM", "ECLIPSE",
                  "VISUAL_STUDIO"})
#: ``programmingLanguage.languageName`` values of the clients' language ids, lower-cased
LANGUAGES = frozenset({
    "abap", "bash", "c", "cpp", "csharp", "css", "dart", "dockerfile", "go", "hcl", "html",
    "ipynb", "java", "javascript", "json", "jsx", "kotlin", "lua", "markdown", "php",
    "plaintext", "powershell", "python", "r", "ruby", "rust", "scala", "shell", "sql", "swift",
    "systemverilog", "tf", "tsx", "typescript", "vue", "xml", "yaml",
})
#: a dimension value when the event carries none, one outside the known set, and the share of
#: counters kept before the breakdown existed (or whose events are no longer retained)
NONE, OTHER, NOT_RECORDED = "none", "other", "not recorded"
Dim = tuple[str, str]  # (ide, language)
UNRECORDED: Dim = (NOT_RECORDED, NOT_RECORDED)


def ide_of(ide_category: str | None) -> str:
    if ide_category is None:
        return NONE
    return ide_category if ide_category in IDES else OTHER


def language_of(event: Mapping[str, Any]) -> str:
    lang = event.get("programmingLanguage")
    name = lang.get("languageName") if isinstance(lang, dict) else None
    if not isinstance(name, str) or not name:
        return NONE
    known = _SEEN.get(name)
    if known is None:
        if len(_SEEN) >= 4096:  # names are few; a client sending endless new ones is not kept
            _SEEN.clear()
        folded = name.strip().lower()
        known = _SEEN[name] = folded if folded in LANGUAGES else OTHER
    return known


#: languageName as sent -> what it is counted under (a lookup instead of strip, lower, test)
_SEEN: dict[str, str] = {}


def dim_of(event: Mapping[str, Any], ide_category: str | None) -> Dim:
    """The (IDE, language) an event is counted under."""
    return ide_of(ide_category), language_of(event)
