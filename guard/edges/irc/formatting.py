"""
Text between IRC and XMPP: mIRC formatting codes stripped or mapped to XEP-0393 message styling,
and every stray control character removed in both directions.

The codes (as mIRC and IRCv3's formatting document define them): bold 0x02, colour 0x03 with up
to two digits of foreground and optionally a comma and up to two of background, hex colour 0x04
with ``RRGGBB`` and optionally ``,RRGGBB``, monospace 0x11, reverse 0x16, italic 0x1D,
strikethrough 0x1E, underline 0x1F, each a toggle; reset 0x0F ends them all.  Colours, reverse and
underline have no XEP-0393 form and are dropped.

``formatting_to_styling`` writes a span of bold, italic, strikethrough or monospace as ``*b*``,
``_i_``, ``~s~`` or `` `m` `` only where the span is clean, so the styling a client sees is the
one IRC meant: exactly one of those four styles is on over the span; the span is not empty, does
not start or end with whitespace and holds none of ``*_~```; it starts the text or follows
whitespace, and ends the text or is followed by whitespace or punctuation that is not a directive.
Any other span loses its codes and keeps its text.

Control characters (after decoding, in both directions): every C0 character (U+0000 to U+001F),
DEL (U+007F) and every C1 character (U+0080 to U+009F) is removed, except TAB, which becomes a
space, and, toward IRC, the line breaks (LF, CR LF, CR become LF) that ``lines.split_text`` turns
into separate lines.  U+FFFE, U+FFFF and lone surrogates (not XML characters) are removed too.

Invisible formatting characters (Unicode's format class, Cf, and the two separators), in both
directions: the bidirectional embeddings and overrides (U+202A to U+202E) and isolates (U+2066 to
U+2069), which reorder what a reader sees and can make a line look said by someone else or say
the opposite, are removed; so are the invisible characters that only hide words from the eye and
from filters: ZERO WIDTH SPACE U+200B, WORD JOINER U+2060, the invisible operators U+2061 to
U+2064, the deprecated format characters U+206A to U+206F, ZERO WIDTH NO-BREAK SPACE (the byte
order mark) U+FEFF and the interlinear annotation characters U+FFF9 to U+FFFB.  LINE SEPARATOR
U+2028 and PARAGRAPH SEPARATOR U+2029 are line breaks: toward IRC they split lines like LF; from
IRC (one line) they become a space.  Kept, because right-to-left and many other scripts need
them and they reorder nothing beyond a neutral character: the marks LRM U+200E, RLM U+200F and
ARABIC LETTER MARK U+061C, ZWNJ U+200C and ZWJ U+200D (Persian, Indic scripts, emoji sequences).
A nick is stricter (``nicks.has_invisible``): any format character at all is refused or escaped.
"""

from __future__ import annotations

import re

BOLD = "\x02"
COLOUR = "\x03"
HEX_COLOUR = "\x04"
RESET = "\x0f"
MONOSPACE = "\x11"
REVERSE = "\x16"
ITALIC = "\x1d"
STRIKETHROUGH = "\x1e"
UNDERLINE = "\x1f"

_TOGGLES = {BOLD, MONOSPACE, REVERSE, ITALIC, STRIKETHROUGH, UNDERLINE}
# The XEP-0393 directive of each IRC style that has one.
STYLING_DIRECTIVES = {BOLD: "*", ITALIC: "_", STRIKETHROUGH: "~", MONOSPACE: "`"}
_DIRECTIVE_CHARS = frozenset(STYLING_DIRECTIVES.values())

_CODE = re.compile(
    "\x03(?:[0-9]{1,2}(?:,[0-9]{1,2})?)?"
    "|\x04(?:[0-9A-Fa-f]{6}(?:,[0-9A-Fa-f]{6})?)?"
    "|[\x02\x0f\x11\x16\x1d\x1e\x1f]"
)
# Removed from text both ways: bidi embeddings, overrides and isolates, and invisible characters (see above).
INVISIBLE = "\u200b\u202a-\u202e\u2060-\u2064\u2066-\u206f\ufeff\ufff9-\ufffb"
SEPARATORS = "\u2028\u2029"
_CONTROLS = re.compile(f"[\x00-\x08\x0a-\x1f\x7f-\x9f\ufffe\uffff\ud800-\udfff{INVISIBLE}]")
_CONTROLS_BUT_LF = re.compile(f"[\x00-\x08\x0b-\x1f\x7f-\x9f\ufffe\uffff\ud800-\udfff{INVISIBLE}]")
_LINE_BREAK = re.compile(f"\r\n|[\r{SEPARATORS}]")
_SEPARATOR = re.compile(f"[{SEPARATORS}]")


def without_controls(text: str) -> str:
    """``text`` from IRC with no control or invisible formatting character: TAB and the line and paragraph
    separators become a space, the others go (the marks LRM, RLM, ALM, ZWNJ and ZWJ stay)."""
    return _CONTROLS.sub("", _SEPARATOR.sub(" ", text.replace("\t", " ")))



def text_for_irc(text: str) -> str:
    """
    An XMPP text ready for ``lines.split_text``: line breaks as LF, TAB as a space, and no other
    control character (so no formatting code or CTCP delimiter an XMPP user typed reaches IRC).
    """
    return _CONTROLS_BUT_LF.sub("", _LINE_BREAK.sub("\n", text).replace("\t", " "))


def strip_formatting(text: str) -> str:
    """``text`` from IRC without its formatting codes (and their colour numbers) or any control character."""
    return without_controls(_CODE.sub("", text))


def formatting_to_styling(text: str) -> str:
    """``text`` from IRC with its clean bold, italic, strikethrough and monospace spans as XEP-0393 styling, the rest stripped."""
    segments = _styled_segments(text)
    out = []
    for index, (styles, chunk) in enumerate(segments):
        before = segments[index - 1][1][-1] if index > 0 else None
        after = segments[index + 1][1][0] if index + 1 < len(segments) else None
        if len(styles) == 1 and _is_clean_span(chunk, before, after):
            directive = STYLING_DIRECTIVES[next(iter(styles))]
            out.append(f"{directive}{chunk}{directive}")
        else:
            out.append(chunk)
    return "".join(out)


def _styled_segments(text: str) -> list[tuple[frozenset[str], str]]:
    """The text between codes, each with the mappable styles on over it; adjacent equal styles merged, empty pieces dropped."""
    active: set[str] = set()
    segments: list[tuple[frozenset[str], str]] = []

    def add(chunk: str) -> None:
        chunk = without_controls(chunk)
        if not chunk:
            return
        styles = frozenset(active & STYLING_DIRECTIVES.keys())
        if segments and segments[-1][0] == styles:
            segments[-1] = (styles, segments[-1][1] + chunk)
        else:
            segments.append((styles, chunk))

    position = 0
    for match in _CODE.finditer(text):
        add(text[position:match.start()])
        position = match.end()
        code = match.group()
        if code == RESET:
            active.clear()
        elif code in _TOGGLES:
            active ^= {code}
    add(text[position:])
    return segments


def _is_clean_span(chunk: str, before: str | None, after: str | None) -> bool:
    if not chunk or chunk[0].isspace() or chunk[-1].isspace():
        return False
    if _DIRECTIVE_CHARS.intersection(chunk):
        return False
    if before is not None and not before.isspace():
        return False
    if after is not None and not after.isspace() and (after.isalnum() or after in _DIRECTIVE_CHARS):
        return False
    return True
