"""
A laboratory of real peers for tests, the demo and benchmarks: a throwaway
PKI, a loopback DNS responder, Prosody servers and slixmpp clients.

- ``pki``: per-side CAs, server and guard certificates, hostile samples
  (``python -m guard.lab.pki FOLDER``, or ``deploy/make-test-pki FOLDER``);
- ``dns``: twisted.names responder for SRV/A of the lab domains (a process);
- ``prosody``: one Prosody 0.12 server (config, process, users, CPU, logs);
- ``tcprelay``: the dumb byte relay standing where the guard would (a process);
- ``topology``: ``Lab(mode, authentication)`` brings the whole lab up and down,
  modes "direct", "relay" and "guard"; one lab at a time per machine;
- ``clients``: synchronous slixmpp clients and the message blast;
- ``demo``: ``run_demo(out)``, Romeo and Juliet through the guard.

Typical use::

    with Lab("guard", "certificate") as lab, ClientLoop() as loop:
        with lab.client(loop, "romeo@red.example") as romeo, \\
             lab.client(loop, "juliet@blue.example") as juliet:
            romeo.send_xml("<message to='juliet@blue.example' type='chat'><body>Hi</body></message>")
            juliet.wait_for_body("romeo@red.example", "Hi")
"""
