"""``guard explain`` shows the stanza that leaves exactly as the S2S wire serialiser writes it."""

import io
from pathlib import Path

from guard.app.policy_commands import explain_main
from guard.edges.xmlstream import StreamParser, serialise

ALLOW_ALL = Path(__file__).resolve().parents[2] / "policies" / "allow-all.toml"

STANZA = (
    "<message from='a@red.example/pc' to='b@blue.example' type='chat' id='m1'>"
    "<body>1 > 0 &amp; say \"hi\"</body>"
    "<x xmlns='jabber:x:oob'><url>https://blue.example/a?b=c&amp;d=e</url></x>"
    "<x xmlns='jabber:x:oob'><url>https://blue.example/second</url></x>"
    "</message>"
)
HEADER = (
    b"<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams'"
    b" to='blue.example' from='red.example' version='1.0'>"
)


def wire_serialisation(stanza: str) -> str:
    """What the guard writes on an S2S stream for this stanza, read through the stream parser."""
    received = []
    StreamParser(lambda header: None, lambda element, size: received.append(element), lambda: None).feed(
        HEADER + stanza.encode("utf-8")
    )
    (element,) = received
    return serialise(element)


def test_leaves_as_prints_the_bytes_the_wire_serialiser_writes():
    """The 'leaves as' line is the wire serialisation (minimal escaping, namespaces declared once), not toXml()."""
    out = io.StringIO()
    assert explain_main(["--policy", str(ALLOW_ALL)], out=out, err=io.StringIO(), stdin=io.StringIO(STANZA)) == 0
    leaves_as = out.getvalue().split("leaves as:\n", 1)[1]
    assert leaves_as == wire_serialisation(STANZA) + "\n"
    assert leaves_as == (
        '<message from="a@red.example/pc" to="b@blue.example" type="chat" id="m1">'
        '<body>1 > 0 &amp; say "hi"</body>'
        '<x xmlns="jabber:x:oob"><url>https://blue.example/a?b=c&amp;d=e</url></x>'
        '<x xmlns="jabber:x:oob"><url>https://blue.example/second</url></x></message>\n'
    )
