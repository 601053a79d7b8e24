"""
Formatting (guard/edges/irc/formatting.py): mIRC codes stripped or mapped to XEP-0393 styling
where the span is clean, and control characters removed in both directions.
"""

import pytest

from guard.edges.irc.formatting import formatting_to_styling, strip_formatting, text_for_irc, without_controls

# (name, IRC text, stripped, as XEP-0393 styling)
FORMATTED_TEXT = [
    ("plain", "hello world", "hello world", "hello world"),
    ("bold word", "hello \x02world\x02", "hello world", "hello *world*"),
    ("italic", "\x1ditalic\x1d text", "italic text", "_italic_ text"),
    ("strikethrough", "a \x1egone\x1e b", "a gone b", "a ~gone~ b"),
    ("monospace", "run \x11make test\x11", "run make test", "run `make test`"),
    ("bold to the end of the text", "say \x02loud", "say loud", "say *loud*"),
    ("reset ends the span", "\x02bold\x0f plain", "bold plain", "*bold* plain"),
    ("bold before punctuation", "\x02yes\x02!", "yes!", "*yes*!"),
    ("two styles at once are not clean", "\x02\x1dboth\x0f", "both", "both"),
    ("span inside a word is not clean", "x\x02y\x02z", "xyz", "xyz"),
    ("span followed by a letter is not clean", "\x02ab\x02c", "abc", "abc"),
    ("span starting with a space is not clean", "a\x02 b\x02", "a b", "a b"),
    ("span ending with a space is not clean", "\x02b \x02a", "b a", "b a"),
    ("directive inside the span is not clean", "\x02a*b\x02", "a*b", "a*b"),
    ("empty span", "a \x02\x02 b", "a  b", "a  b"),
    ("colour with both numbers", "\x0304,12red\x03 text", "red text", "red text"),
    ("colour with one digit", "\x034red", "red", "red"),
    ("colour keeps digits after two", "\x03041red", "1red", "1red"),
    ("colour without background keeps the comma", "\x0304,x", ",x", ",x"),
    ("bare colour resets", "a\x03b", "ab", "ab"),
    ("hex colour", "\x04FF0000,00FF00red\x04 x", "red x", "red x"),
    ("bare hex colour", "\x04red", "red", "red"),
    ("coloured bold word stays bold", "\x02\x0304red\x03\x02 x", "red x", "*red* x"),
    ("underline and reverse are dropped", "\x1funder\x1f \x16rev\x16", "under rev", "under rev"),
    ("bold and underline maps the bold", "\x02\x1fboth\x1f\x02 x", "both x", "*both* x"),
    ("stray controls go", "a\x01b\x07c\x1bd\x7fe\x85f", "abcdef", "abcdef"),
    ("tab becomes a space", "a\tb", "a b", "a b"),
    ("CTCP low-level quote characters go, their letters stay", "a\x100b\x10n", "a0bn", "a0bn"),
    ("non-characters go", "a\ufffeb\uffffc", "abc", "abc"),
]


@pytest.mark.parametrize(
    "text, stripped, styled", [row[1:] for row in FORMATTED_TEXT], ids=[row[0] for row in FORMATTED_TEXT]
)
def test_irc_formatting_is_stripped_or_mapped_to_styling(text, stripped, styled):
    """strip_formatting removes every code and control; formatting_to_styling writes clean spans as XEP-0393 and strips the rest."""
    assert strip_formatting(text) == stripped
    assert formatting_to_styling(text) == styled


def test_no_control_character_survives_from_irc():
    """Every C0 control, DEL and every C1 control is removed from IRC text, TAB becoming a space."""
    every = "".join(chr(code) for code in range(0x00, 0xA0)) + "\ufffe\uffff\ud800"
    for cleaned in (without_controls(every), strip_formatting(every), formatting_to_styling(every)):
        assert cleaned == " " + "".join(chr(code) for code in range(0x20, 0x7F))


def test_no_control_character_reaches_irc_from_xmpp():
    """XMPP text loses every C0 and C1 control (formatting codes and CTCP delimiters an XMPP user typed among them); line breaks become LF and TAB a space."""
    every = "".join(chr(code) for code in range(0x00, 0xA0))
    assert text_for_irc(every) == " \n\n" + "".join(chr(code) for code in range(0x20, 0x7F))
    assert text_for_irc("one\r\ntwo\rthree\nfour") == "one\ntwo\nthree\nfour"
    assert text_for_irc("\x01ACTION fakes\x01 \x02bold\x02 \x0304red") == "ACTION fakes bold 04red"
