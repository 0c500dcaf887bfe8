"""A fault-injecting TCP proxy for one directed link between two queue voters.

Voter A reaches voter B only through the proxy of the link A→B (A's configuration lists B at the
proxy's port). The Raft transport sends A's messages to B over A's own connection to B, so
cutting this proxy cuts exactly the direction A→B, whatever B sends to A.

Cut modes:
  "refuse"     open connections are reset and new ones are closed at once (a dead route);
  "blackhole"  bytes stop moving both ways on open and new connections, which stay open (lost
               packets); healing resets them, as TCP would after its retransmission timeout.
Thread-safe: cut()/heal()/close() from any thread; one thread accepts, two pump each connection.
"""

import select
import socket
import struct
import threading

UP = "up"
REFUSE = "refuse"
BLACKHOLE = "blackhole"


class _Connection:
    def __init__(self, client, upstream):
        self.client = client
        self.upstream = upstream
        self.paused = False
        self.closed = False
        self.lock = threading.Lock()

    def close(self):
        with self.lock:
            if self.closed:
                return
            self.closed = True
        for sock in (self.client, self.upstream):
            if sock is None:
                continue
            try:
                # RST rather than FIN: the peer sees the connection die, not end cleanly.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            except OSError:
                pass
            try:
                sock.close()
            except OSError:
                pass


class LinkProxy:
    def __init__(self, target_port, name=""):
        self.name = name
        self.target = ("127.0.0.1", target_port)
        self.state = UP
        self._lock = threading.Lock()
        self._connections = set()
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self.port = self._listener.getsockname()[1]
        self._stopping = False
        self._thread = threading.Thread(target=self._accept_loop, daemon=True,
                                        name=f"proxy-{name}")
        self._thread.start()

    def cut(self, mode):
        assert mode in (REFUSE, BLACKHOLE)
        with self._lock:
            self.state = mode
            connections = list(self._connections)
        for connection in connections:
            if mode == REFUSE:
                connection.close()
            else:
                connection.paused = True

    def heal(self):
        with self._lock:
            self.state = UP
            stale = [c for c in self._connections if c.paused or c.upstream is None]
        for connection in stale:
            connection.close()

    def close(self):
        self._stopping = True
        try:
            self._listener.close()
        except OSError:
            pass
        with self._lock:
            connections = list(self._connections)
        for connection in connections:
            connection.close()

    def _accept_loop(self):
        while not self._stopping:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                state = self.state
            if state == REFUSE:
                _Connection(client, None).close()
                continue
            if state == BLACKHOLE:
                held = _Connection(client, None)
                held.paused = True
                with self._lock:
                    self._connections.add(held)
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=2)
                upstream.settimeout(None)
            except OSError:
                _Connection(client, None).close()
                continue
            connection = _Connection(client, upstream)
            with self._lock:
                self._connections.add(connection)
            threading.Thread(target=self._pump, args=(connection,), daemon=True).start()

    def _pump(self, connection):
        pairs = {connection.client: connection.upstream, connection.upstream: connection.client}
        try:
            while not connection.closed:
                if connection.paused:
                    threading.Event().wait(0.05)
                    continue
                readable, _, _ = select.select(list(pairs), [], [], 0.1)
                for sock in readable:
                    if connection.paused:
                        break
                    data = sock.recv(65536)
                    if not data:
                        raise OSError("closed")
                    pairs[sock].sendall(data)
        except (OSError, ValueError):
            pass
        finally:
            connection.close()
            with self._lock:
                self._connections.discard(connection)
