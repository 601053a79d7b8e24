"""
The pair link: one mutually authenticated TLS connection between the two
halves of a back-to-back guard, carrying the stanzas of every domain pair.

What flows over it (after the TLS handshake, with no negotiation: XEP-0361
"zero handshake" is the model), in each direction independently::

    <?xml version='1.0'?>
    <stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams'
                   from='half-a' to='half-b' version='1.0'>
    <resume xmlns='urn:xmpp-guard:link:0' session='S1' next='41' seen-session='S2' h='17'/>
    <message from='romeo@red.example' to='juliet@blue.example'>...</message>   (stanza 41)
    <r xmlns='urn:xmpp:sm:3'/>                                               (ack request)
    <a xmlns='urn:xmpp:sm:3' h='18'/>                                        (ack)
    ...
    </stream:stream>

- ``from``/``to`` name the halves (the link names of the configuration); the
  identity that counts is the peer's certificate (pinned SHA-256 fingerprint
  or a dedicated CA and the peer's link name in its subjectAltName).
- ``resume`` is the first element each half sends: ``session`` identifies the
  sender's outgoing sequence (new at every process start), ``next`` the
  sequence number of the first stanza it sends on this connection;
  ``seen-session``/``h`` say how many stanzas of the peer's sequence it has
  received so far (XEP-0198's counter).
- Stanzas are numbered 1, 2, ... per outgoing session, implicitly by order.
  The receiver counts; on ``<r/>`` it answers ``<a h='N'/>``; the sender keeps
  every stanza in a bounded retransmission buffer until acknowledged and sends
  the unacknowledged ones again on the next connection, starting at ``next``.
  The receiver drops the ones it has already counted: nothing lost, nothing
  doubled.
- A stanza the receiver cannot take (its parser refuses it: too large, too
  deep, not well-formed) ends the connection with a stream error that names
  it, as an application-specific condition (RFC 6120 4.9.4)::

      <stream:error><policy-violation xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>
        <refused xmlns='urn:xmpp-guard:link:0' stanza='42'/></stream:error>

  which also counts every stanza before 42 as received.  The sender settles
  stanza 42 as refused (bounced to its sender, audited) and never writes it
  again; its next ``<resume/>`` starts after it and the receiver skips the
  number.
"""
