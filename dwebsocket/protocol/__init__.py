"""The sans-I/O WebSocket protocol core (RFC 6455 + RFC 7692).

Bytes in, events out, bytes to send. Nothing here imports ``socket``, Django or ``uwsgi``;
the backends are thin I/O adapters around it.

Modules:

- :mod:`.frames`     ``Opcode``, ``CloseCode``, masking, frame encoding, close payloads.
- :mod:`.handshake`  opening-handshake validation and the 101 response (server side), the
                     request and response check (client side, for ``dwebsocket.testing``).
- :mod:`.deflate`    permessage-deflate: negotiation and the per-message codec.
- :mod:`.server`     ``accept``: the 101 response and the ``Connection`` of an accepted
                     handshake (negotiation, no I/O).
- :mod:`.connection` ``Connection``: the state machine that turns received bytes into
                     events (``str``/``bytes`` messages, ``Ping``, ``Pong``, ``Close``) and
                     outgoing messages into bytes.
- :mod:`.accelerator` whether the optional C accelerator ``_speedups`` is loaded
                     (``DWEBSOCKET_NO_SPEEDUPS``).
- ``_speedups``      optional C: masking, the frame-header encoder, the receive loop's
                     fast path and ``ReceiveState`` (built by ``setup.py`` when a compiler
                     is there); pure Python without it.
"""
