"""
Properties of the IRC wire, checked with hypothesis: what format_line writes parses back to what
it was given; format_line refuses CR, LF and NUL wherever they cannot be escaped; parse_line
answers every byte string with a message or BadLine, and what it accepts is a well-formed
message; split_text keeps its budget and loses only the separators; NickBook's nicks are valid,
distinct by fold, and stable across dump and load.
"""

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from guard.edges.irc.lines import BadLine, IrcMessage, format_line, parse_line, split_text
from guard.edges.irc.nicks import Isupport, NickBook, is_valid_nick

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

COMMANDS = st.one_of(st.from_regex(r"[A-Z]{1,12}", fullmatch=True), st.from_regex(r"[0-9]{3}", fullmatch=True))
TEXT_CHARS = st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00\r\n")
MIDDLES = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00\r\n "), min_size=1, max_size=16).filter(
    lambda text: not text.startswith(":")
)
LASTS = st.text(TEXT_CHARS, max_size=60)
_KEY_NAMES = st.text("abcXYZ019-", min_size=1, max_size=12)
_VENDORS = st.sampled_from(["", "example.com/", "x/", "a-1.b2.c/", "draft/"])
TAG_KEYS = st.builds(lambda client, vendor, name: client + vendor + name, st.sampled_from(["", "+"]), _VENDORS, _KEY_NAMES)
TAG_VALUES = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=30)
TAGS = st.dictionaries(TAG_KEYS, TAG_VALUES, max_size=5)


@st.composite
def messages(draw):
    """A command, up to 14 middle params and an optional last one, and tags."""
    params = draw(st.lists(MIDDLES, max_size=14))
    if draw(st.booleans()):
        params.append(draw(LASTS))
    return draw(COMMANDS), params, draw(TAGS)


@SETTINGS
@given(messages())
def test_parse_of_format_is_the_message_given(message):
    """parse(format(x)) == x for every valid x; format refuses only a line really past 512 bytes (the tags drawn stay far below theirs)."""
    command, params, tags = message
    try:
        written = format_line(command, params, tags)
    except BadLine as refused:
        assert refused.reason == "line too long"
        assert len(format_line(command, params, tags, line_bytes=65536)) - len(b"@") > 512
        return
    assert written.endswith(b"\r\n") and b"\r" not in written[:-2] and b"\n" not in written[:-2]
    assert parse_line(written[:-2]) == IrcMessage(tags, None, command, params)


@SETTINGS
@given(messages(), st.sampled_from(["\r", "\n", "\x00", "\r\n"]), st.integers(min_value=0), st.integers(min_value=0))
def test_format_refuses_cr_lf_and_nul_in_the_command_and_every_param(message, bad, where, at):
    """A CR, LF or NUL put anywhere in the command or any param makes format_line refuse the line."""
    command, params, tags = message
    parts = [command, *params]
    index = where % len(parts)
    part = parts[index]
    position = at % (len(part) + 1)
    parts[index] = part[:position] + bad + part[position:]
    try:
        format_line(parts[0], parts[1:], tags)
    except BadLine:
        return
    raise AssertionError(f"written with {bad!r} in part {index}")


@SETTINGS
@given(messages(), st.sampled_from(["\r", "\n", "\x00"]), st.integers(min_value=0))
def test_format_refuses_nul_in_a_tag_and_cr_lf_in_a_key_but_escapes_cr_lf_in_a_value(message, bad, at):
    """NUL in a tag value and CR, LF or NUL in a tag key are refused; CR and LF in a value are escaped and come back."""
    command, params, _ = message
    value = "v" * (at % 5) + bad + "w"
    try:
        format_line(command, params, {f"k{bad}": "v"})
    except BadLine:
        pass
    else:
        raise AssertionError("written with a control character in a tag key")
    try:
        written = format_line(command, params, {"k": value})
    except BadLine as refused:
        assert bad == "\x00" or refused.reason == "line too long"
        return
    assert bad != "\x00"
    assert parse_line(written[:-2]).tags == {"k": value}


@SETTINGS
@given(st.binary(max_size=700))
def test_parse_answers_any_bytes_with_a_well_formed_message_or_badline(raw):
    """Any byte string is a message or BadLine (nothing else is raised), and what is accepted holds no CR, LF or NUL and formats back to itself."""
    try:
        message = parse_line(raw)
    except BadLine:
        return
    assert len(message.params) <= 15
    for text in [message.command, message.source or "", *message.params]:
        assert not {"\r", "\n", "\x00"} & set(text)
    for middle in message.params[:-1]:
        assert middle and " " not in middle and not middle.startswith(":")
    again = format_line(message.command, message.params, source=message.source, line_bytes=8192)
    reread = parse_line(again[:-2], line_bytes=8192)
    assert (reread.source, reread.command, reread.params) == (message.source, message.command, message.params)


@SETTINGS
@given(st.lists(st.sampled_from([b"@", b":", b" ", b";", b"=", b"\\", b"a", b"+", b"/", b".", b"1", b"\xff", b"\xc3\xa9"]), max_size=40))
def test_parse_answers_punctuation_soup_with_a_message_or_badline(pieces):
    """Lines built from IRC's own punctuation, where parsers go wrong, are messages or BadLine, never another exception."""
    raw = b"".join(pieces)
    try:
        parse_line(raw)
    except BadLine:
        pass


@SETTINGS
@given(st.text(st.characters(blacklist_categories=("Cs",)), max_size=300), st.integers(min_value=4, max_value=80))
def test_split_text_keeps_the_budget_and_loses_only_separators(text, budget):
    """Every piece is non-empty, within budget in UTF-8 bytes and free of CR and LF; only spaces and line breaks are lost."""
    pieces = split_text(text, budget)
    for piece in pieces:
        assert piece and len(piece.encode("utf-8")) <= budget
        assert "\r" not in piece and "\n" not in piece

    def essence(value):
        return value.replace(" ", "").replace("\r", "").replace("\n", "")

    assert essence("".join(pieces)) == essence(text)


@SETTINGS
@given(
    st.lists(st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=40), max_size=30),
    st.sampled_from(["ascii", "rfc1459", "strict-rfc1459"]),
    st.sampled_from([5, 9, 16, 30]),
)
def test_nickbook_gives_valid_distinct_stable_nicks_that_survive_dump_and_load(muc_nicks, casemapping, nicklen):
    """Every IRC nick given is valid within NICKLEN, distinct by the network's fold, never reserved, and the same after dump and load."""
    isupport = Isupport(nicklen=nicklen, casemapping=casemapping)
    book = NickBook(isupport, reserved=["Guard"])
    given_nicks = {nick: book.irc_nick_for(nick) for nick in muc_nicks}
    folds = [isupport.fold(nick) for nick in given_nicks.values()]
    assert len(set(folds)) == len(folds)
    assert isupport.fold("Guard") not in folds
    assert all(is_valid_nick(nick, nicklen) for nick in given_nicks.values())
    assert {nick: book.irc_nick_for(nick) for nick in muc_nicks} == given_nicks
    restarted = NickBook(isupport, reserved=["Guard"])
    assert restarted.load(book.dump()) == 0
    assert {nick: restarted.irc_nick_for(nick) for nick in reversed(muc_nicks)} == given_nicks
