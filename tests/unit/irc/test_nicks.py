"""
IRC nicks (guard/edges/irc/nicks.py): ISUPPORT read from 005, casemapping folds, the NickBook's
nicks (identical, escaped, suffixed on collision, stable, reserved, bounded, dumped and loaded),
and IRC nicks as MUC resourceparts.
"""

import pytest

from guard.core.addressing import parse_jid
from guard.edges.irc.nicks import (
    SPECIAL,
    Isupport,
    NickBook,
    SERVICE_NICKS,
    NickBookFull,
    escaped_nick,
    is_valid_nick,
)

NICKLEN_9 = Isupport()
NICKLEN_30 = Isupport(nicklen=30)
IRC_CHARSET = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-" + SPECIAL


def test_isupport_reads_the_parameters_of_a_005_reply():
    """NICKLEN, CASEMAPPING, CHANTYPES, PREFIX, CHANNELLEN and LINELEN come from the tokens between the target and the text."""
    isupport = Isupport.from_reply(
        ["alice", "NICKLEN=30", "CASEMAPPING=ascii", "CHANTYPES=#", "PREFIX=(qov)~@+", "CHANNELLEN=64",
         "LINELEN=1024", "NETWORK=Lab", "are supported by this server"]
    )
    assert isupport == Isupport(nicklen=30, casemapping="ascii", chantypes="#", prefix="(qov)~@+", channellen=64, linelen=1024)
    assert isupport.tokens["NETWORK"] == "Lab"
    assert isupport.prefixes() == {"q": "~", "o": "@", "v": "+"}


def test_isupport_unescapes_values_and_a_later_reply_updates_an_earlier_one():
    """A value's \\x20 is a space; a second 005 keeps what it does not change."""
    first = Isupport.from_reply(["alice", "NICKLEN=16", "NETWORK=Lab\\x20Net\\x5Cx", "are supported"])
    second = Isupport.from_reply(["alice", "CASEMAPPING=strict-rfc1459", "are supported"], first)
    assert first.tokens["NETWORK"] == "Lab Net\\x"
    assert (second.nicklen, second.casemapping) == (16, "strict-rfc1459")


def test_isupport_minus_param_returns_a_parameter_to_its_default():
    """-NICKLEN and -CASEMAPPING undo what the server said before; the raw token goes too."""
    isupport = Isupport().updated(["NICKLEN=30", "CASEMAPPING=ascii", "EXCEPTS"])
    removed = isupport.updated(["-NICKLEN", "-CASEMAPPING", "-EXCEPTS"])
    assert (removed.nicklen, removed.casemapping) == (9, "rfc1459")
    assert "EXCEPTS" in isupport.tokens and "EXCEPTS" not in removed.tokens


def test_isupport_ignores_malformed_tokens_and_values():
    """Values that are not numbers, out of range, or tokens that are not ISUPPORT keys leave the rules as they were."""
    isupport = Isupport().updated(
        ["NICKLEN=abc", "NICKLEN=0", "NICKLEN=99999", "LINELEN=100", "CHANNELLEN=-1", "lower=1", "=x", "NICKLEN=٣٠"]
    )
    assert isupport == Isupport()


def test_an_unknown_casemapping_folds_as_rfc1459():
    """A casemapping the book does not know folds as the widest of the three, so the book avoids more, never fewer, nicks."""
    isupport = Isupport().updated(["CASEMAPPING=rfc7613"])
    assert isupport.casemapping == "rfc1459"
    assert isupport.fold("A[]\\~") == "a{}|^"


@pytest.mark.parametrize(
    "casemapping, nick, folded",
    [
        ("ascii", "Alice[]\\~", "alice[]\\~"),
        ("rfc1459", "Alice[]\\~", "alice{}|^"),
        ("strict-rfc1459", "Alice[]\\~", "alice{}|~"),
    ],
)
def test_each_casemapping_folds_its_own_characters(casemapping, nick, folded):
    """ascii folds A-Z; rfc1459 also []\\~; strict-rfc1459 also []\\ but not ~."""
    assert Isupport(casemapping=casemapping).fold(nick) == folded


@pytest.mark.parametrize("isupport", [NICKLEN_9, NICKLEN_30], ids=["NICKLEN 9", "NICKLEN 30"])
def test_a_valid_irc_nick_is_used_as_it_is(isupport):
    """MUC nicks that IRC allows (letters, digits, - and []\\`_^{|}, not starting with a digit or -) are unchanged."""
    book = NickBook(isupport)
    for nick in ("alice", "Bob", "[away]", "_x_", "`quote", "a-1", "{brace}", "x^y|z", "n" * 9):
        assert book.irc_nick_for(nick) == nick


@pytest.mark.parametrize("nick", ["9lives", "-dash", "with space", "dot.ted", "at@sign", "ex!clam", "colon:", "Zoë", "李小龙", "😀"])
def test_a_nick_irc_does_not_allow_is_escaped_within_nicklen(nick):
    """Every MUC nick IRC refuses gets a valid IRC nick within NICKLEN, ending in | and a four-character hash."""
    for isupport in (NICKLEN_9, NICKLEN_30):
        given = NickBook(isupport).irc_nick_for(nick)
        assert is_valid_nick(given, isupport.nicklen)
        assert given != nick
        assert given[-5] == "|"


def test_the_escape_transliterates_what_maps_cleanly():
    """Accents drop to their base letter, runs of other characters become one _, and a leading digit gets a _ before it."""
    assert escaped_nick("Zoë", 30).startswith("Zoe|")
    assert escaped_nick("José María", 30).startswith("Jose_Maria|")
    assert escaped_nick("李小龙", 30).startswith("_|")
    assert escaped_nick("9lives", 30).startswith("_9lives|")
    assert escaped_nick("Zoë", 30) == escaped_nick("Zoë", 30)


def test_unicode_nicks_that_transliterate_alike_stay_distinct():
    """Zoë, Zoé, Zoe\u0308 and Zoe are four MUC nicks and get four IRC nicks."""
    book = NickBook(NICKLEN_9)
    given = [book.irc_nick_for(nick) for nick in ("Zoë", "Zoé", "Zoe\u0308", "Zoe")]
    assert given[3] == "Zoe"
    assert len({NICKLEN_9.fold(nick) for nick in given}) == 4
    assert all(is_valid_nick(nick, 9) for nick in given)


@pytest.mark.parametrize("isupport", [NICKLEN_9, NICKLEN_30], ids=["NICKLEN 9", "NICKLEN 30"])
def test_over_long_nicks_are_cut_with_a_hash_and_stay_distinct(isupport):
    """Two MUC nicks longer than NICKLEN that share their start get distinct IRC nicks within NICKLEN."""
    book = NickBook(isupport)
    first = book.irc_nick_for("a" * 40 + "first")
    second = book.irc_nick_for("a" * 40 + "second")
    assert len(first) == len(second) == isupport.nicklen
    assert first.startswith("a" * (isupport.nicklen - 5)) and second.startswith("a" * (isupport.nicklen - 5))
    assert first != second


def test_a_nick_exactly_nicklen_long_is_kept_and_one_more_is_escaped():
    """A valid nick of exactly NICKLEN characters is used as it is; one character more is cut and hashed."""
    book = NickBook(NICKLEN_9)
    assert book.irc_nick_for("abcdefghi") == "abcdefghi"
    assert book.irc_nick_for("abcdefghij").startswith("abcd|")


@pytest.mark.parametrize(
    "casemapping, first, second, collide",
    [
        ("ascii", "Bob", "bob", True),
        ("ascii", "[x]", "{x}", False),
        ("ascii", "a\\", "a|", False),
        ("rfc1459", "Bob", "bob", True),
        ("rfc1459", "[x]", "{x}", True),
        ("rfc1459", "a\\", "a|", True),
        ("strict-rfc1459", "Bob", "BOB", True),
        ("strict-rfc1459", "[x]", "{x}", True),
        ("strict-rfc1459", "a\\", "a|", True),
    ],
)
def test_collisions_under_each_casemapping_get_a_suffix(casemapping, first, second, collide):
    """Two MUC nicks the network folds alike get distinct IRC nicks, the second with a |2 suffix; others stay identical."""
    book = NickBook(Isupport(casemapping=casemapping))
    assert book.irc_nick_for(first) == first
    given = book.irc_nick_for(second)
    assert given == (f"{second}|2" if collide else second)
    assert book.isupport.fold(given) != book.isupport.fold(first)


def test_suffixes_count_up_and_fit_nicklen():
    """A third and fourth colliding nick get |3 and |4; a full-length nick is cut to make room for its suffix."""
    book = NickBook(NICKLEN_9)
    assert [book.irc_nick_for(nick) for nick in ("bob", "Bob", "BOB", "bOb")] == ["bob", "Bob|2", "BOB|3", "bOb|4"]
    assert [book.irc_nick_for(nick) for nick in ("ninechars", "NINECHARS")] == ["ninechars", "NINECHA|2"]


def test_a_valid_nick_that_looks_like_a_suffix_is_not_confused_with_one():
    """A MUC nick 'bob|2' that arrives after 'Bob' took 'Bob|2' gets a nick of its own."""
    book = NickBook(NICKLEN_9)
    given = [book.irc_nick_for(nick) for nick in ("bob", "Bob", "bob|2")]
    assert len({NICKLEN_9.fold(nick) for nick in given}) == 3


def test_the_same_muc_nick_gets_the_same_irc_nick_for_the_life_of_the_book():
    """Asked again, after others came, after it left and came back, a MUC nick gets the same IRC nick."""
    book = NickBook(NICKLEN_9)
    first = [book.irc_nick_for(nick) for nick in ("bob", "Bob", "Zoë", "a" * 20)]
    for nick in ("carol", "BOB", "Zoé"):
        book.irc_nick_for(nick)
    book.release("bob")
    book.release("Bob")
    book.irc_nick_for("bOB")
    assert [book.irc_nick_for(nick) for nick in ("bob", "Bob", "Zoë", "a" * 20)] == first


def test_reserved_nicks_are_never_handed_out_in_any_case():
    """The bot's nick, reserved, is not given to a MUC occupant of that nick or of any case variant of it."""
    book = NickBook(Isupport(casemapping="rfc1459"), reserved=["GuardBot", "[gw]"])
    given = [book.irc_nick_for(nick) for nick in ("guardbot", "GUARDBOT", "GuardBot", "{GW}", "[gw]")]
    folds = {book.isupport.fold(nick) for nick in given}
    assert "guardbot" not in folds and "{gw}" not in folds
    assert len(folds) == 5


def test_service_nicks_are_reserved_so_no_occupant_speaks_as_nickserv():
    """A MUC occupant called NickServ or chanserv gets a suffixed nick, so IRC users never see services speak from XMPP."""
    book = NickBook(NICKLEN_9)
    assert book.irc_nick_for("NickServ") == "NickSer|2"
    assert book.irc_nick_for("chanserv") == "chanser|2"
    assert all(book.isupport.fold(book.irc_nick_for(nick)) != book.isupport.fold(nick) for nick in SERVICE_NICKS)


def test_a_nick_the_server_says_is_in_use_is_replaced_and_the_replacement_kept():
    """After ERR_NICKNAMEINUSE the occupant gets the next free nick, keeps it, and nobody is given the refused one."""
    book = NickBook(NICKLEN_9)
    assert book.irc_nick_for("dave") == "dave"
    assert book.nick_in_use("dave") == "dave|2"
    assert book.irc_nick_for("dave") == "dave|2"
    assert book.irc_nick_for("Dave") == "Dave|3"
    assert book.holder_of("dave") is None
    assert book.holder_of("DAVE|2") == "dave"


def test_the_nicks_named_in_use_are_bounded_too():
    """The book remembers at most max_entries nicks the server said were in use, the oldest forgotten first."""
    book = NickBook(NICKLEN_9, max_entries=2)
    for nick in ("ann", "ben", "cat"):
        book.irc_nick_for(nick)
        book.nick_in_use(nick)
        book.release(nick)
    assert book.dump()["in_use_on_irc"] == ["ben", "cat"]
    assert book.irc_nick_for("ANN") == "ANN"


def test_holder_of_names_only_occupants_whose_connection_is_in_use():
    """holder_of finds the MUC nick behind an IRC nick (by fold) while it is in use, and none once it is released."""
    book = NickBook(NICKLEN_9)
    book.irc_nick_for("Zoë")
    zoe = book.irc_nick_for("Zoë")
    assert book.holder_of(zoe.upper()) == "Zoë"
    book.release("Zoë")
    assert book.holder_of(zoe) is None
    assert book.holder_of("nobody") is None


def test_the_book_is_bounded_and_forgets_the_least_recently_used_released_entry():
    """Past max_entries the released entry used longest ago is forgotten; when every entry is in use the book refuses."""
    book = NickBook(NICKLEN_9, max_entries=3)
    for nick in ("a", "b", "c"):
        book.irc_nick_for(nick)
    with pytest.raises(NickBookFull):
        book.irc_nick_for("d")
    book.release("b")
    book.release("a")
    book.irc_nick_for("A")
    assert len(book) == 3
    assert book.irc_nick_for("A") == "A"
    assert [muc for muc, _ in book.dump()["entries"]] == ["b", "c", "A"]


def test_the_book_refuses_a_nicklen_too_short_for_an_escape_and_oversized_muc_nicks():
    """NICKLEN below 5 cannot hold | and a hash; a MUC nick over 1023 bytes or empty is not a resourcepart."""
    with pytest.raises(ValueError):
        NickBook(Isupport(nicklen=4))
    book = NickBook(Isupport(nicklen=5))
    assert is_valid_nick(book.irc_nick_for("Zoë"), 5)
    for nick in ("", "é" * 512, None):
        with pytest.raises(ValueError):
            book.irc_nick_for(nick)


def test_dump_and_load_keep_every_nick_across_a_restart():
    """A new book loaded from dump() gives every MUC nick its old IRC nick, and new ones still avoid them."""
    book = NickBook(NICKLEN_9, reserved=["gw"])
    names = ["bob", "Bob", "Zoë", "李小龙", "a" * 20, "dave"]
    before = {nick: book.irc_nick_for(nick) for nick in names}
    book.nick_in_use("dave")
    before["dave"] = book.irc_nick_for("dave")
    restarted = NickBook(NICKLEN_9, reserved=["gw"])
    assert restarted.load(book.dump()) == 0
    assert {nick: restarted.irc_nick_for(nick) for nick in reversed(names)} == before
    assert restarted.irc_nick_for("DAVE") == "DAVE|3"
    assert restarted.irc_nick_for("BOB") == "BOB|3"


def test_load_drops_entries_this_book_could_not_have_given():
    """A dump naming an IRC nick that is not the MUC nick's own (impersonation), reserved, duplicate or too long is dropped."""
    book = NickBook(NICKLEN_9, reserved=["gw"])
    data = {
        "version": 1,
        "entries": [
            ["mallory", "alice"],
            ["gw", "gw"],
            ["bob", "bob"],
            ["BOB", "bob"],
            ["Bob", "Bob|2"],
            ["eve", "eve|x"],
            ["averyverylongnick", "averyverylongnick"],
            [1, "x"],
            ["solo"],
        ],
    }
    assert book.load(data) == 7
    assert [entry for entry in book.dump()["entries"]] == [["bob", "bob"], ["Bob", "Bob|2"]]


def test_load_after_nicklen_shrank_drops_the_nicks_that_no_longer_fit():
    """A network that lowered NICKLEN keeps the entries that still fit and gives the others new nicks."""
    wide = NickBook(NICKLEN_30)
    wide.irc_nick_for("short")
    long_nick = wide.irc_nick_for("twentycharacternick1")
    narrow = NickBook(NICKLEN_9)
    assert narrow.load(wide.dump()) == 1
    assert narrow.irc_nick_for("short") == "short"
    assert narrow.irc_nick_for("twentycharacternick1") != long_nick


def test_load_keeps_the_most_recent_entries_within_the_bound_and_refuses_what_is_not_a_dump():
    """A dump larger than max_entries keeps its newest entries; data that is not a dump, or a non-empty book, raises."""
    big = NickBook(NICKLEN_9, max_entries=10)
    for index in range(10):
        big.irc_nick_for(f"n{index}")
    small = NickBook(NICKLEN_9, max_entries=4)
    assert small.load(big.dump()) == 6
    assert [muc for muc, _ in small.dump()["entries"]] == ["n6", "n7", "n8", "n9"]
    for data in ({"version": 2, "entries": []}, {"version": 1, "entries": "x"}, [], None):
        with pytest.raises(ValueError):
            NickBook(NICKLEN_9).load(data)
    with pytest.raises(ValueError):
        small.load(big.dump())


def test_every_irc_nick_character_is_a_valid_resourcepart_unchanged():
    """Each character IRC allows in a nick, alone and all together, passes RFC 7622 resourcepart preparation unchanged."""
    book = NickBook(NICKLEN_9)
    for nick in [*IRC_CHARSET, IRC_CHARSET]:
        assert book.muc_nick_for(nick) == nick
        assert parse_jid(f"room@conference.example/{nick}").resource == nick


def test_a_nick_outside_irc_charset_becomes_a_prepared_or_escaped_resourcepart():
    """A UTF-8 nick a lax server allowed is used as stringprep prepares it; one stringprep refuses is escaped."""
    book = NickBook(NICKLEN_9)
    assert book.muc_nick_for("Zoë") == "Zoë"
    assert book.muc_nick_for("\uff21lice") == "Alice"
    for nick in ("bad\x07bell", "rtl\u200ftext", "\u0627\u0031"):
        escaped = book.muc_nick_for(nick)
        assert escaped.startswith("irc|")
        assert parse_jid(f"room@conference.example/{escaped}").resource == escaped
        assert book.muc_nick_for(nick) == escaped
