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
"""
