"""
Abbreviation of what both ends of a constrained link already know: the
domains behind each half.  A stanza the near half writes is mostly from a
JID of the near domain to a JID of the far domain, so in ``from`` the near
domain and in ``to`` the far domain (and in the link's ``<recipients/>``
list, the far domain) go without saying.

The written form of an address, given the domain it implies (``default``):

- ``alice@/field`` is ``alice@default/field``, ``/field`` is
  ``default/field``, the empty string is ``default``: an empty domainpart,
  which no JID has, stands for the default domain;
- ``ops@muc./alice`` is ``ops@muc.default/alice``: a domainpart ending in a
  dot is a subdomain of the default domain;
- ``:anything`` is ``anything`` as it is: the escape for every value the two
  rules above would misread (and for a value starting with ``:``);
- anything else is the address as it is.

Each address has exactly one written form: ``expand`` refuses (None) a form
that ``shorten`` would not have written, so what is judged on arrival is
what the sender meant, and nothing else reads the same.

One ``Abbreviation(near_domain, far_domain)`` per half, with the half's own
domain as ``near_domain``: ``shorten`` is what this half writes, ``expand``
reads what the peer half (configured as the mirror) wrote, so that
``Abbreviation(b, a).expand(Abbreviation(a, b).shorten(stanza))`` is
``stanza`` again for every stanza.  The receiving half runs ``expand``
before its addressing check.
"""

from __future__ import annotations

from twisted.words.xish import domish

from guard.edges.link.wire import LINK_NS

ESCAPE = ":"
# The link's list of a merged groupchat message's recipients (issue 13, h-link):
# <recipients xmlns='urn:xmpp-guard:link:0'><to jid='...'/>...</recipients>.
RECIPIENTS = (LINK_NS, "recipients")
RECIPIENT = (LINK_NS, "to")


def _split(value: str) -> tuple[str, str, str]:
    """(localpart with its '@', domainpart, '/' and resourcepart) as RFC 7622 reads them, without judging them."""
    slash = value.find("/")
    before, resource = (value, "") if slash < 0 else (value[:slash], value[slash:])
    at = before.find("@")
    return before[: at + 1], before[at + 1:], resource


def written_form(address: str, default: str) -> str:
    """The one written form of ``address`` when ``default`` is the domain that goes without saying."""
    local, domain, resource = _split(address)
    if domain == default:
        domain = ""
    elif domain.endswith("." + default) and len(domain) > len(default) + 1:
        domain = domain[: -len(default)]
    written = local + domain + resource
    if written.startswith(ESCAPE) or read_form(written, default) != address:
        written = ESCAPE + address
    return written


def read_form(written: str, default: str) -> str:
    """The address a written form stands for (not checked for being the one form ``written_form`` writes)."""
    if written.startswith(ESCAPE):
        return written[len(ESCAPE):]
    local, domain, resource = _split(written)
    if domain == "":
        domain = default
    elif domain.endswith("."):
        domain += default
    return local + domain + resource


class Abbreviation:
    """Leaves out the configured domains on the way out, puts them back (strictly) on the way in."""

    def __init__(self, near_domain: str, far_domain: str):
        if not near_domain or not far_domain or ESCAPE in near_domain + far_domain:
            raise ValueError("the two ends' domains are non-empty and hold no ':'")
        self.near_domain = near_domain
        self.far_domain = far_domain

    def shorten(self, element):
        """The stanza as this half writes it: ``from`` implies the near domain, ``to`` and recipients the far one."""
        return _rewrite(element, lambda value, default: written_form(value, default),
                        self.near_domain, self.far_domain)

    def expand(self, element):
        """The stanza the peer half meant (``from`` implies its domain, ``to`` ours), or None if no stanza is written so."""
        def read(value, default):
            address = read_form(value, default)
            if written_form(address, default) != value:
                raise _NotAbbreviation()
            return address

        try:
            return _rewrite(element, read, self.far_domain, self.near_domain)
        except _NotAbbreviation:
            return None


class _NotAbbreviation(Exception):
    """A written address that is not the one form of any address."""


def _plain_copy(element) -> domish.Element:
    """A new, plain (never sealed: its serialisation is not remembered) element with the same name, attributes and children."""
    rewritten = domish.Element((element.uri, element.name), defaultUri=element.defaultUri,
                               attribs=dict(element.attributes), localPrefixes=dict(element.localPrefixes or {}))
    rewritten.children = list(element.children)
    return rewritten


def _rewrite(element, change, sender_domain: str, receiver_domain: str):
    """A copy of ``element`` with its addresses changed (children shared, except a recipients list, copied)."""
    rewritten = _plain_copy(element)
    for name, default in (("from", sender_domain), ("to", receiver_domain)):
        value = element.attributes.get(name)
        if value is not None:
            rewritten.attributes[name] = change(value, default)
    rewritten.children = [
        _rewrite_recipients(child, change, receiver_domain)
        if not isinstance(child, str) and (child.uri, child.name) == RECIPIENTS else child
        for child in element.children
    ]
    return rewritten


def _rewrite_recipients(recipients, change, receiver_domain: str):
    rewritten = _plain_copy(recipients)
    rewritten.children = []
    for child in recipients.children:
        if not isinstance(child, str) and (child.uri, child.name) == RECIPIENT and child.attributes.get("jid") is not None:
            recipient = _plain_copy(child)
            recipient.attributes["jid"] = change(child.attributes["jid"], receiver_domain)
            child = recipient
        rewritten.children.append(child)
    return rewritten
