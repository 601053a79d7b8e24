"""The IRC wire modules are pure: they import no sockets, no reactor, no clock, nothing from the app."""

from pathlib import Path

from tests.unit.test_layers import imports_of

IRC = Path(__file__).resolve().parents[3] / "guard" / "edges" / "irc"
PURE_MODULES = ("__init__.py", "lines.py", "formatting.py", "nicks.py")
ALLOWED = {
    "__future__", "base64", "codecs", "collections", "dataclasses", "functools", "hashlib", "re", "typing",
    "unicodedata", "guard.core.addressing",
}


def test_the_wire_modules_import_only_pure_modules():
    """lines, formatting and nicks import only pure standard modules and the core's JID parsing."""
    imported = {name for module in PURE_MODULES for name in imports_of(IRC / module)}
    assert imported <= ALLOWED, imported - ALLOWED
