"""A minimal HTTP/1.1 keep-alive client for the benchmark scripts (standard library only).

http.client would do, but it hides when the first byte of an answer arrives and costs more
per request than the raw socket loop below, which matters when filling 100,000 callbacks.
The server only ever answers with Content-Length bodies, so that is all this understands.
"""

import json
import socket
import time

HOST = "127.0.0.1"


class Conn:
    """One persistent connection to the relay on 127.0.0.1:port."""

    def __init__(self, port, timeout=10.0):
        self.sock = socket.create_connection((HOST, port), timeout=timeout)
        # Requests are one small write each; do not let Nagle hold them back.
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def send(self, path):
        self.sock.sendall(b"GET %s HTTP/1.1\r\nHost: bench\r\n\r\n" % path.encode())

    def read_response(self):
        """Reads one response; returns (status, body, first_byte_time, done_time).

        Times are time.perf_counter() values: when the first bytes of the answer were in hand,
        and when the whole answer was.
        """
        first = time.perf_counter() if self.buf else None
        while b"\r\n\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if first is None:
                first = time.perf_counter()
            if not chunk:
                raise ConnectionError("server closed the connection")
            self.buf += chunk
        head, _, rest = self.buf.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split()[1])
        length = 0
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value.strip())
        while len(rest) < length:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("server closed the connection mid-body")
            rest += chunk
        self.buf = rest[length:]
        return status, rest[:length], first, time.perf_counter()

    def get(self, path):
        """Sends one GET and returns (status, body)."""
        self.send(path)
        status, body, _, _ = self.read_response()
        return status, body

    def close(self):
        self.sock.close()


def get_json(port, path, timeout=5.0):
    """One GET on a fresh connection; returns (status, parsed JSON body or None)."""
    c = Conn(port, timeout)
    try:
        status, body = c.get(path)
    finally:
        c.close()
    try:
        return status, json.loads(body)
    except ValueError:
        return status, None
