"""
The edges: everything that touches bytes, sockets, TLS or time (hardened XML
parsing, S2S streams, the relay's outbound queues).  Depends on the core,
never the other way round.
"""
