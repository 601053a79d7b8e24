"""The core stays pure: it imports no I/O, no reactor, no metrics, and nothing from the edges or the app."""

import ast
from pathlib import Path

CORE = Path(__file__).resolve().parents[2] / "guard" / "core"
ALLOWED_ROOTS = {
    "__future__", "abc", "base64", "binascii", "collections", "copy", "dataclasses", "datetime", "enum",
    "fnmatch", "functools", "hashlib", "hmac", "ipaddress", "itertools", "json", "math", "operator", "re",
    "string", "sys", "textwrap", "tomllib", "types", "typing", "unicodedata", "bisect", "heapq",
    "zope", "pyasn1", "pyasn1_modules", "re2", "guard",
}
ALLOWED_TWISTED = ("twisted.words.protocols.jabber.jid", "twisted.words.xish.domish", "twisted.words.xish")


def imports_of(path):
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            if node.module == "twisted.words.protocols.jabber" or node.module == "twisted.words.xish":
                for alias in node.names:
                    yield f"{node.module}.{alias.name}"
            else:
                yield node.module


def test_core_imports_only_pure_modules():
    """Every module under guard/core imports only the standard library's pure parts, zope, pyasn1, Twisted's jid/domish and the core itself."""
    offences = []
    for path in sorted(CORE.rglob("*.py")):
        for name in imports_of(path):
            root = name.split(".")[0]
            if name.startswith("twisted"):
                if not name.startswith(ALLOWED_TWISTED):
                    offences.append(f"{path.relative_to(CORE)}: {name}")
            elif root == "guard":
                if not name.startswith("guard.core"):
                    offences.append(f"{path.relative_to(CORE)}: {name}")
            elif root not in ALLOWED_ROOTS:
                offences.append(f"{path.relative_to(CORE)}: {name}")
    assert offences == []


def test_edges_never_import_the_app():
    """The composition root (guard.app) is imported by nothing in the core or the edges."""
    offences = []
    for folder in ("core", "edges"):
        for path in sorted((CORE.parent / folder).rglob("*.py")):
            for name in imports_of(path):
                if name and name.startswith("guard.app"):
                    offences.append(f"{folder}/{path.name}: {name}")
    assert offences == []
