"""
The IRC line corpus, as data: raw lines (without CR LF) and the message each parses to, raw lines
and why each is refused, and what format_line writes or refuses.  Each row starts with a name.
"""

from guard.edges.irc.lines import IrcMessage

PARSED = [
    ("ping", b"PING :irc.example", IrcMessage({}, None, "PING", ["irc.example"])),
    ("ping without colon", b"PING irc.example", IrcMessage({}, None, "PING", ["irc.example"])),
    (
        "numeric welcome",
        b":irc.example 001 alice :Welcome to the network, alice",
        IrcMessage({}, "irc.example", "001", ["alice", "Welcome to the network, alice"]),
    ),
    (
        "numeric isupport",
        b":irc.example 005 alice NICKLEN=30 CASEMAPPING=ascii :are supported by this server",
        IrcMessage(
            {}, "irc.example", "005", ["alice", "NICKLEN=30", "CASEMAPPING=ascii", "are supported by this server"]
        ),
    ),
    (
        "numeric names reply",
        b":irc.example 353 alice = #ops :@alice +bob carol",
        IrcMessage({}, "irc.example", "353", ["alice", "=", "#ops", "@alice +bob carol"]),
    ),
    (
        "source nick!user@host",
        b":alice!~a@host.example PRIVMSG #ops :hello",
        IrcMessage({}, "alice!~a@host.example", "PRIVMSG", ["#ops", "hello"]),
    ),
    ("source nick only", b":alice PRIVMSG bob hi", IrcMessage({}, "alice", "PRIVMSG", ["bob", "hi"])),
    ("source nick@host", b":alice@host PRIVMSG bob hi", IrcMessage({}, "alice@host", "PRIVMSG", ["bob", "hi"])),
    (
        "server source",
        b":irc.example NOTICE * :*** Looking up your hostname",
        IrcMessage({}, "irc.example", "NOTICE", ["*", "*** Looking up your hostname"]),
    ),
    (
        "trailing with colons",
        b":a!b@c PRIVMSG #ops :time: 12:30 :)",
        IrcMessage({}, "a!b@c", "PRIVMSG", ["#ops", "time: 12:30 :)"]),
    ),
    (
        "trailing starting with a colon",
        b":a!b@c PRIVMSG #ops ::-)",
        IrcMessage({}, "a!b@c", "PRIVMSG", ["#ops", ":-)"]),
    ),
    ("empty trailing", b":a!b@c TOPIC #ops :", IrcMessage({}, "a!b@c", "TOPIC", ["#ops", ""])),
    ("colon inside a middle", b"MODE #ops +b a:b", IrcMessage({}, None, "MODE", ["#ops", "+b", "a:b"])),
    ("lower-case command", b"privmsg #a :x", IrcMessage({}, None, "PRIVMSG", ["#a", "x"])),
    ("runs of spaces", b"PRIVMSG   #a    b   ", IrcMessage({}, None, "PRIVMSG", ["#a", "b"])),
    ("no params", b"QUIT", IrcMessage({}, None, "QUIT", [])),
    (
        "ctcp action",
        b":a!b@c PRIVMSG #ops :\x01ACTION waves\x01",
        IrcMessage({}, "a!b@c", "PRIVMSG", ["#ops", "\x01ACTION waves\x01"]),
    ),
    (
        "ctcp version query",
        b":a!b@c PRIVMSG gw :\x01VERSION\x01",
        IrcMessage({}, "a!b@c", "PRIVMSG", ["gw", "\x01VERSION\x01"]),
    ),
    (
        "fifteen params, the last trailing",
        b"CMD a b c d e f g h i j k l m n :o p",
        IrcMessage({}, None, "CMD", list("abcdefghijklmn") + ["o p"]),
    ),
    (
        "fifteen middle params",
        b"CMD a b c d e f g h i j k l m n o",
        IrcMessage({}, None, "CMD", list("abcdefghijklmno")),
    ),
    (
        "CTCP low-level quoting is not undone, so \\x100 never becomes a NUL",
        b":a!b@c PRIVMSG #ops :a\x100b\x10nc\x10rd",
        IrcMessage({}, "a!b@c", "PRIVMSG", ["#ops", "a\x100b\x10nc\x10rd"]),
    ),
    (
        "server tags",
        b"@time=2026-12-01T13:00:00.000Z;msgid=abc :a!b@c PRIVMSG #a :hi",
        IrcMessage({"time": "2026-12-01T13:00:00.000Z", "msgid": "abc"}, "a!b@c", "PRIVMSG", ["#a", "hi"]),
    ),
    (
        "vendor and client-only tags",
        b"@+example.com/foo=bar;example.com/x-y=1;+typing=active :a PRIVMSG #a x",
        IrcMessage({"+example.com/foo": "bar", "example.com/x-y": "1", "+typing": "active"}, "a", "PRIVMSG", ["#a", "x"]),
    ),
    (
        "tag escapes",
        b"@k=a\\:b\\sc\\\\d\\re\\nf PING x",
        IrcMessage({"k": "a;b c\\d\re\nf"}, None, "PING", ["x"]),
    ),
    ("unknown escape and lone final backslash", b"@k=\\x\\ PING x", IrcMessage({"k": "x"}, None, "PING", ["x"])),
    ("keys without values", b"@k;k2= PING x", IrcMessage({"k": "", "k2": ""}, None, "PING", ["x"])),
    ("a key twice keeps the last", b"@k=1;k=2 PING x", IrcMessage({"k": "2"}, None, "PING", ["x"])),
    (
        "tag injection stays inside its value",
        b"@k=x\\s:evil!e@h\\sPRIVMSG\\s#a\\s:pwned\\r\\nQUIT :alice PRIVMSG #a :hi",
        IrcMessage({"k": "x :evil!e@h PRIVMSG #a :pwned\r\nQUIT"}, "alice", "PRIVMSG", ["#a", "hi"]),
    ),
    (
        "tag value with a semicolon escape cannot start a new tag",
        b"@a=1\\:b=2 PING x",
        IrcMessage({"a": "1;b=2"}, None, "PING", ["x"]),
    ),
    ("utf-8 text", b":a PRIVMSG #a :caf\xc3\xa9 \xe2\x98\x95", IrcMessage({}, "a", "PRIVMSG", ["#a", "café ☕"])),
    ("latin-1 fallback", b":a PRIVMSG #a :caf\xe9", IrcMessage({}, "a", "PRIVMSG", ["#a", "café"])),
    (
        "each param decoded on its own",
        b":a PRIVMSG #caf\xc3\xa9 :na\xefve",
        IrcMessage({}, "a", "PRIVMSG", ["#café", "naïve"]),
    ),
    (
        "invalid utf-8 in a tag value is replaced",
        b"@k=a\xffb PING x",
        IrcMessage({"k": "a\ufffdb"}, None, "PING", ["x"]),
    ),
    ("overlong utf-8 is not utf-8", b"PRIVMSG #a :\xc0\xaf", IrcMessage({}, None, "PRIVMSG", ["#a", "À¯"])),
    ("utf-8 surrogate bytes are not utf-8", b"PRIVMSG #a :\xed\xa0\x80", IrcMessage({}, None, "PRIVMSG", ["#a", "í\xa0\x80"])),
    (
        "exactly 510 bytes without tags",
        b"PRIVMSG #a :" + b"x" * (510 - len(b"PRIVMSG #a :")),
        IrcMessage({}, None, "PRIVMSG", ["#a", "x" * (510 - len(b"PRIVMSG #a :"))]),
    ),
    (
        "long server tags do not count toward the 512",
        b"@k=" + b"v" * (8191 - len(b"@k= ")) + b" PRIVMSG #a :" + b"x" * (510 - len(b"PRIVMSG #a :")),
        IrcMessage({"k": "v" * (8191 - len(b"@k= "))}, None, "PRIVMSG", ["#a", "x" * (510 - len(b"PRIVMSG #a :"))]),
    ),
    (
        "client tags at 4094 bytes",
        b"@+k=" + b"v" * (4094 - len(b"@+k= ")) + b" PING x",
        IrcMessage({"+k": "v" * (4094 - len(b"@+k= "))}, None, "PING", ["x"]),
    ),
]

# Lines refused, with the reason BadLine gives.
REFUSED = [
    ("empty line", b"", "empty line"),
    ("space-only line", b"    ", "empty line"),
    ("tags and nothing else", b"@a=b ", "empty line"),
    ("tags without a space", b"@a=b", "tags without a message"),
    ("NUL in a trailing param", b"PRIVMSG #a :hi\x00there", "NUL, CR or LF inside the line"),
    ("NUL in a middle param", b"PRIVMSG #a\x00b :hi", "NUL, CR or LF inside the line"),
    ("CR in a param", b"PRIVMSG #a :hi\rthere", "NUL, CR or LF inside the line"),
    ("LF smuggling a second command", b"PRIVMSG #a :hi\nQUIT :bye", "NUL, CR or LF inside the line"),
    ("CR LF smuggling a second command", b"PRIVMSG #a :hi\r\nQUIT :bye", "NUL, CR or LF inside the line"),
    ("NUL in a tag value", b"@k=a\x00b PING x", "NUL, CR or LF inside the line"),
    ("raw CR in a tag value", b"@k=a\rb PING x", "NUL, CR or LF inside the line"),
    ("raw LF in a tag value", b"@k=a\nb PING x", "NUL, CR or LF inside the line"),
    ("NUL in the source", b":a\x00b PING x", "NUL, CR or LF inside the line"),
    ("511 bytes without tags", b"PRIVMSG #a :" + b"x" * (511 - len(b"PRIVMSG #a :")), "line too long"),
    ("a whole kilobyte", b"PRIVMSG #a :" + b"x" * 1024, "line too long"),
    ("tags past 8191", b"@k=" + b"v" * (8192 - len(b"@k= ")) + b" PING x", "tags too long"),
    ("client tags past 4094", b"@+k=" + b"v" * (4095 - len(b"@+k= ")) + b" PING x", "client tags too long"),
    ("more than both limits", b"@k=" + b"v" * 9000 + b" PING x", "line too long"),
    ("empty tag section", b"@ PING x", "empty tag section"),
    ("empty tag between separators", b"@a;;b PING x", "bad tag key"),
    ("trailing tag separator", b"@a; PING x", "bad tag key"),
    ("empty tag key", b"@=x PING y", "bad tag key"),
    ("punctuation in a tag key", b"@k!ey=x PING y", "bad tag key"),
    ("client prefix alone", b"@+ PING y", "bad tag key"),
    ("empty vendor label", b"@vendor../k=1 PING y", "bad tag key"),
    ("non-ASCII tag key", b"@\xc3\xa9=x PING y", "bad tag key"),
    ("empty source", b": PING x", "empty source"),
    ("source without a command", b":alice", "no command"),
    ("source and spaces without a command", b":alice   ", "no command"),
    ("punctuation in a command", b"PRIV-MSG x", "bad command"),
    ("four-digit numeric", b"1234 x", "bad command"),
    ("two-digit numeric", b"12 x", "bad command"),
    ("letters and digits", b"PRIVMSG2 x", "bad command"),
    ("non-ASCII command", b"\xff x", "bad command"),
    ("sixteen middle params", b"CMD a b c d e f g h i j k l m n o p", "more than 15 parameters"),
    ("fifteen middles and a trailing", b"CMD a b c d e f g h i j k l m n o :p q", "more than 15 parameters"),
]

# (name, command, params, tags, the bytes format_line writes)
FORMATTED = [
    ("text with spaces", "PRIVMSG", ["#a", "hi there"], None, b"PRIVMSG #a :hi there\r\n"),
    ("one word", "NICK", ["bob"], None, b"NICK bob\r\n"),
    ("empty last param", "TOPIC", ["#a", ""], None, b"TOPIC #a :\r\n"),
    ("last param with a leading colon", "PRIVMSG", ["#a", ":)"], None, b"PRIVMSG #a ::)\r\n"),
    ("lower-case command", "join", ["#a"], None, b"JOIN #a\r\n"),
    ("numeric", "001", ["alice", "hi"], None, b"001 alice hi\r\n"),
    ("utf-8 text", "PRIVMSG", ["#a", "café"], None, b"PRIVMSG #a caf\xc3\xa9\r\n"),
    ("ctcp action", "PRIVMSG", ["#a", "\x01ACTION waves\x01"], None, b"PRIVMSG #a :\x01ACTION waves\x01\r\n"),
    (
        "tag value escaped",
        "PRIVMSG",
        ["#a", "x"],
        {"+draft/reply": "a;b c\\d\r\ne"},
        b"@+draft/reply=a\\:b\\sc\\\\d\\r\\ne PRIVMSG #a x\r\n",
    ),
    ("tag without value", "TAGMSG", ["#a"], {"+typing": "", "+x": None}, b"@+typing;+x TAGMSG #a\r\n"),
    (
        "tag injection escaped",
        "PRIVMSG",
        ["#a", "hi"],
        {"k": "x :evil PRIVMSG #a :pwned\r\nQUIT"},
        b"@k=x\\s:evil\\sPRIVMSG\\s#a\\s:pwned\\r\\nQUIT PRIVMSG #a hi\r\n",
    ),
]

_LONG = "x " + "x" * (510 - len("PRIVMSG #a :x "))
# (name, command, params, tags, the reason BadLine gives)
FORMAT_REFUSED = [
    ("CR in the last param", "PRIVMSG", ["#a", "hi\rQUIT"], None, "NUL, CR or LF in a parameter"),
    ("LF in the last param", "PRIVMSG", ["#a", "hi\nQUIT :bye"], None, "NUL, CR or LF in a parameter"),
    ("CR LF in the last param", "PRIVMSG", ["#a", "hi\r\nQUIT"], None, "NUL, CR or LF in a parameter"),
    ("NUL in the last param", "PRIVMSG", ["#a", "hi\x00"], None, "NUL, CR or LF in a parameter"),
    ("LF in a middle param", "PRIVMSG", ["#a\nQUIT", "hi"], None, "NUL, CR or LF in a parameter"),
    ("NUL in a middle param", "PRIVMSG", ["#a\x00", "hi"], None, "NUL, CR or LF in a parameter"),
    ("CR in the command", "PRIVMSG\r", ["#a"], None, "bad command"),
    ("LF in the command", "QUIT\nPRIVMSG", ["#a"], None, "bad command"),
    ("NUL in the command", "PING\x00", ["x"], None, "bad command"),
    ("space in the command", "PRIV MSG", ["#a"], None, "bad command"),
    ("empty command", "", ["#a"], None, "bad command"),
    ("NUL in a tag value", "PING", ["x"], {"k": "a\x00b"}, "NUL in a tag value"),
    ("CR in a tag key", "PING", ["x"], {"k\r": "v"}, "bad tag key"),
    ("space in a tag key", "PING", ["x"], {"k x": "v"}, "bad tag key"),
    ("equals in a tag key", "PING", ["x"], {"k=x": "v"}, "bad tag key"),
    ("semicolon in a tag key", "PING", ["x"], {"k;x": "v"}, "bad tag key"),
    ("space in a middle param", "PRIVMSG", ["#a b", "hi"], None, "space, colon or nothing in a middle parameter"),
    ("colon first in a middle param", "PRIVMSG", [":#a", "hi"], None, "space, colon or nothing in a middle parameter"),
    ("empty middle param", "PRIVMSG", ["", "hi"], None, "space, colon or nothing in a middle parameter"),
    ("sixteen params", "CMD", list("abcdefghijklmnop"), None, "more than 15 parameters"),
    ("511 bytes", "PRIVMSG", ["#a", _LONG + "x"], None, "line too long"),
    ("multi-byte text past 510 bytes", "PRIVMSG", ["#a", "é" * 250], None, "line too long"),
    ("tags past 4094 bytes", "PING", ["x"], {"k": "v" * (4094 - len("@k= ") + 1)}, "tags too long"),
    ("escapes count toward the tag limit", "PING", ["x"], {"k": ";" * 2046}, "tags too long"),
    ("lone surrogate", "PRIVMSG", ["#a", "\ud800"], None, "text that UTF-8 cannot encode"),
    ("param that is not text", "PRIVMSG", ["#a", b"hi"], None, "parameter is not text"),
]
