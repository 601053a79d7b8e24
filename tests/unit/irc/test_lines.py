"""
IRC lines (guard/edges/irc/lines.py): the corpus of raw lines parsed or refused, what
format_line writes or refuses, text split for IRC's line limit, and CTCP.
"""

import pytest

from guard.edges.irc.lines import (
    CTCP_ACTION_OVERHEAD,
    LINE_BYTES,
    BadLine,
    IrcMessage,
    check_fallback,
    ctcp_action,
    ctcp_message,
    format_line,
    parse_line,
    privmsg_budget,
    read_ctcp,
    source_prefix_bytes,
    split_text,
)

from .corpus import FORMAT_REFUSED, FORMATTED, PARSED, REFUSED


@pytest.mark.parametrize("raw, expected", [row[1:] for row in PARSED], ids=[row[0] for row in PARSED])
def test_each_valid_line_of_the_corpus_parses_to_its_message(raw, expected):
    """Each valid raw line of the corpus parses to exactly the message the table gives."""
    assert parse_line(raw) == expected


@pytest.mark.parametrize("raw, reason", [row[1:] for row in REFUSED], ids=[row[0] for row in REFUSED])
def test_each_invalid_line_of_the_corpus_is_refused_for_its_reason(raw, reason):
    """Each invalid raw line of the corpus raises BadLine with the reason the table gives."""
    with pytest.raises(BadLine) as refused:
        parse_line(raw)
    assert refused.value.reason == reason


@pytest.mark.parametrize(
    "command, params, tags, expected", [row[1:] for row in FORMATTED], ids=[row[0] for row in FORMATTED]
)
def test_format_line_writes_the_bytes_of_the_corpus_and_they_parse_back(command, params, tags, expected):
    """format_line writes exactly the corpus bytes, and parsing them gives back the command, params and tags."""
    written = format_line(command, params, tags)
    assert written == expected
    assert parse_line(written[:-2]) == IrcMessage(
        {key: value or "" for key, value in (tags or {}).items()}, None, command.upper(), params
    )


@pytest.mark.parametrize(
    "command, params, tags, reason", [row[1:] for row in FORMAT_REFUSED], ids=[row[0] for row in FORMAT_REFUSED]
)
def test_format_line_refuses_each_bad_line_of_the_corpus(command, params, tags, reason):
    """format_line raises BadLine with the table's reason for each line it must not write."""
    with pytest.raises(BadLine) as refused:
        format_line(command, params, tags)
    assert refused.value.reason == reason


def test_format_line_writes_exactly_512_bytes_and_not_one_more():
    """A line of 510 bytes plus CR LF is written; one byte more is refused."""
    text = "y " + "x" * (510 - len("PRIVMSG #a :y "))
    assert len(format_line("PRIVMSG", ["#a", text])) == LINE_BYTES
    with pytest.raises(BadLine):
        format_line("PRIVMSG", ["#a", text + "x"])


def test_a_network_linelen_raises_both_limits():
    """With ISUPPORT LINELEN passed as line_bytes, longer lines are read and written, and the new limit is enforced."""
    text = "z " + "x" * 700
    line = format_line("PRIVMSG", ["#a", text], line_bytes=1024)
    assert parse_line(line[:-2], line_bytes=1024).params == ["#a", text]
    with pytest.raises(BadLine):
        parse_line(line[:-2])
    with pytest.raises(BadLine):
        format_line("PRIVMSG", ["#a", "x " * 600], line_bytes=1024)


def test_the_source_a_lab_server_writes_parses_back_and_bad_sources_are_refused():
    """format_line's source is written as ':source' and read back; a source with a space, CR or a colon is refused."""
    line = format_line("PRIVMSG", ["#a", "hi there"], source="alice!~a@127.0.0.1")
    assert parse_line(line[:-2]) == IrcMessage({}, "alice!~a@127.0.0.1", "PRIVMSG", ["#a", "hi there"])
    assert parse_line(line[:-2]).source_nick == "alice"
    for source in ("a b", "a\rb", ":a", "", "a\x00"):
        with pytest.raises(BadLine):
            format_line("PING", ["x"], source=source)


def test_source_nick_is_the_part_before_the_user_and_host():
    """source_nick names the nick of nick!user@host and nick@host, the server of a server source, and None without a source."""
    assert parse_line(b":alice!~a@h PING x").source_nick == "alice"
    assert parse_line(b":alice@h PING x").source_nick == "alice"
    assert parse_line(b":irc.example PING x").source_nick == "irc.example"
    assert parse_line(b"PING x").source_nick is None


def test_invalid_utf8_is_replaced_when_the_fallback_is_utf8_itself():
    """With fallback utf-8 (no second charset), bytes that are not UTF-8 become U+FFFD, never passed on."""
    message = parse_line(b":a PRIVMSG #a :ok\xff\xfe\xc3(", fallback="utf-8")
    assert message.params == ["#a", "ok\ufffd\ufffd\ufffd("]


def test_a_configured_fallback_decodes_what_is_not_utf8():
    """cp1252 as the fallback reads the euro sign and curly quotes of a Windows client; UTF-8 still comes first."""
    assert parse_line(b"PRIVMSG #a :\x80 \x93q\x94", fallback="cp1252").params[1] == "€ “q”"
    assert parse_line(b"PRIVMSG #a :\xe2\x82\xac", fallback="cp1252").params[1] == "€"
    assert parse_line(b"PRIVMSG #a :\x81", fallback="cp1252").params[1] == "\ufffd"


def test_a_fallback_that_is_unknown_or_not_ascii_compatible_is_refused():
    """A fallback charset must exist and read ASCII as ASCII, or spaces and colons would lose their meaning."""
    assert check_fallback("latin-1") == "iso8859-1"
    for charset in ("no-such-charset", "utf-16", "utf-32", "rot13", "base64"):
        with pytest.raises(ValueError):
            check_fallback(charset)
    with pytest.raises(ValueError):
        parse_line(b"PING x", fallback="utf-16")


def test_split_text_keeps_every_line_within_its_budget_at_spaces():
    """A text longer than the budget is cut at its last space that fits, the spaces around the cut dropped."""
    assert split_text("hello world this is a test", 10) == ["hello", "world this", "is a test"]
    assert split_text("short", 10) == ["short"]
    assert split_text("hello     world", 6) == ["hello", "world"]
    assert split_text("  indented text", 20) == ["  indented text"]


def test_split_text_starts_a_new_line_at_each_newline_and_drops_empty_lines():
    """LF, CR LF and CR each start a new IRC line; empty lines are dropped since IRC cannot send them."""
    assert split_text("one\ntwo\r\nthree\rfour\n\n\nfive\n", 100) == ["one", "two", "three", "four", "five"]
    assert split_text("", 100) == []
    assert split_text("\n\r\n", 100) == []


def test_split_text_cuts_a_long_word_on_code_point_boundaries():
    """A word longer than the budget is cut between code points, never inside a UTF-8 sequence."""
    text = "é" * 7 + "☕" * 3 + "😀" * 2
    pieces = split_text(text, 5)
    assert "".join(pieces) == text
    assert all(len(piece.encode("utf-8")) <= 5 for piece in pieces)
    assert pieces == ["éé", "éé", "éé", "é☕", "☕", "☕", "😀", "😀"]


def test_split_text_refuses_a_budget_that_cannot_hold_one_code_point():
    """A budget below four bytes cannot carry every code point: ValueError."""
    with pytest.raises(ValueError):
        split_text("abc", 3)
    assert split_text("😀😀", 4) == ["😀", "😀"]


def test_privmsg_budget_fills_the_relayed_line_to_exactly_512_bytes():
    """A text of exactly the budget makes the line the server relays 512 bytes; one byte more is refused."""
    source = "alice!~alice@gateway.example"
    budget = privmsg_budget("#ops", source_prefix_bytes("alice", "~alice", "gateway.example"))
    assert budget == 512 - 2 - len(f":{source} ") - len("PRIVMSG #ops :")
    relayed = format_line("PRIVMSG", ["#ops", "x " + "y" * (budget - 2)], source=source)
    assert len(relayed) == LINE_BYTES
    with pytest.raises(BadLine):
        format_line("PRIVMSG", ["#ops", "x " + "y" * (budget - 1)], source=source)


def test_privmsg_budget_refuses_when_nothing_is_left():
    """A target and source that take the whole line leave no budget: ValueError."""
    with pytest.raises(ValueError):
        privmsg_budget("#" + "c" * 400, 100)


def test_split_text_with_privmsg_budget_gives_lines_a_server_can_relay():
    """Every piece of a long multi-byte text, split by the PRIVMSG budget, makes a relayed line of at most 512 bytes."""
    source = "bob!~bob@host.example"
    budget = privmsg_budget("#ops", source_prefix_bytes("bob", "~bob", "host.example"))
    text = ("naïve café ☕ " * 200).strip()
    pieces = split_text(text, budget)
    assert len(pieces) > 1
    for piece in pieces:
        assert len(format_line("PRIVMSG", ["#ops", piece], source=source)) <= LINE_BYTES


def test_an_action_split_with_its_overhead_fits_the_budget():
    """Pieces split with CTCP_ACTION_OVERHEAD taken off the budget still fit once wrapped as ACTION."""
    budget = privmsg_budget("#ops", source_prefix_bytes("bob", "~bob", "host.example"))
    pieces = split_text("waves " * 200, budget - CTCP_ACTION_OVERHEAD)
    assert all(len(ctcp_action(piece).encode("utf-8")) <= budget for piece in pieces)
    assert CTCP_ACTION_OVERHEAD == len(b"\x01ACTION \x01")


def test_read_ctcp_names_the_kind_of_a_ctcp_text_and_none_for_plain_text():
    """An ACTION becomes (ACTION, text); other queries are named for the caller to refuse; plain text is None."""
    assert read_ctcp("\x01ACTION waves\x01") == ("ACTION", "waves")
    assert read_ctcp("\x01ACTION waves") == ("ACTION", "waves")
    assert read_ctcp("\x01action waves\x01") == ("ACTION", "waves")
    assert read_ctcp("\x01ACTION\x01") == ("ACTION", "")
    assert read_ctcp("\x01VERSION\x01") == ("VERSION", "")
    assert read_ctcp("\x01DCC SEND file 2130706433 4000\x01") == ("DCC", "SEND file 2130706433 4000")
    assert read_ctcp("\x01PING 12345\x01") == ("PING", "12345")
    assert read_ctcp("hello \x01ACTION not ctcp\x01") is None
    assert read_ctcp("plain") is None
    assert read_ctcp("") is None


def test_read_ctcp_gives_an_empty_kind_for_a_malformed_ctcp():
    """A CTCP whose kind is not letters and digits is still CTCP (never text), with kind "" for the caller to refuse."""
    assert read_ctcp("\x01\x01") == ("", "")
    assert read_ctcp("\x01 waves\x01") == ("", " waves")
    assert read_ctcp("\x01ACT-ION x\x01") == ("", "ACT-ION x")


def test_ctcp_messages_are_written_with_delimiters_and_refuse_control_characters():
    """ctcp_action and ctcp_message wrap a body in \\x01; a body holding \\x01, CR, LF or NUL, or a bad kind, is refused."""
    assert ctcp_action("waves") == "\x01ACTION waves\x01"
    assert ctcp_message("VERSION", "xmpp-guard") == "\x01VERSION xmpp-guard\x01"
    assert ctcp_message("version") == "\x01VERSION\x01"
    for body in ("a\x01b", "a\rb", "a\nb", "a\x00b"):
        with pytest.raises(BadLine):
            ctcp_message("ACTION", body)
    for kind in ("", "ACT ION", "ACT\x01"):
        with pytest.raises(BadLine):
            ctcp_message(kind, "x")


def test_parse_line_takes_bytes_only():
    """A line already decoded to text is refused: decoding is parse_line's own, UTF-8 first then the fallback."""
    with pytest.raises(BadLine) as refused:
        parse_line("PING x")
    assert refused.value.reason == "not bytes"


def test_privmsg_budget_counts_the_target_in_utf8_bytes():
    """A channel name with a two-byte character leaves one byte less for the text."""
    assert privmsg_budget("#café", 40) == privmsg_budget("#cafe", 40) - 1
