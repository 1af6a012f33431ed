"""Byte relays for the tests' stand-ins of a cloud's front door (the ALPN gate in test_tls, the
SigV4 gate in test_mqtt_brokers): once a gate has let a connection in, these carry it to the
broker and back."""

import socket
import threading


def relay_both_ways(client, upstream):
    """Copies bytes each way on threads of their own until either side closes, then closes both."""
    for source, sink in ((client, upstream), (upstream, client)):
        threading.Thread(target=_pipe, args=(source, sink), daemon=True).start()


def _pipe(source, sink):
    try:
        while data := source.recv(65536):
            sink.sendall(data)
    except OSError:
        pass
    finally:
        for s in (source, sink):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def close_listener(listener):
    """Closes a listening socket whose accept() another thread is blocked in: shutdown wakes that
    thread, so the port is free when this returns (a bare close() would keep it listening)."""
    try:
        listener.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    listener.close()
