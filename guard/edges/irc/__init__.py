"""
The IRC gateway's wire: IRC lines (RFC 1459/2812 with IRCv3 message tags) parsed from bytes into
``IrcMessage`` values and formatted back into bytes, refusing what is not a valid line (`lines`);
mIRC formatting codes stripped or mapped to XEP-0393 styling, and every stray control character
removed from text (`formatting`); and IRC nicks from MUC nicks and back, by the network's
ISUPPORT rules (`nicks`).  Everything here is pure: no sockets, no reactor, no clock.  The
connections (`client`, `connections`), the bridge's decisions (`bridge`, `labels`) and the
component (`component`, `carrier`) build on it.
"""
