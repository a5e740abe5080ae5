"""A client of ``netmangle serve``, with nothing beyond Python's standard library.

    from netmangle_client import Client

    with Client() as nm:                                   # unix:/run/netmangle.sock
        with nm.attach("tcp.flags.push == 1 => drop", dev="eth0", hook="egress",
                       netns="h1", name="no-push", first=1) as fault:
            ...                                            # traffic
            print(fault.counters()["rules"][0]["acted"])
        # the fault is detached here

A pytest fixture, ``netmangle``, gives each test a Client and detaches whatever the test
attached through it, even when the test fails::

    # conftest.py
    from netmangle_client import netmangle  # noqa: F401

The service is found at $NETMANGLE_SOCKET (default /run/netmangle.sock), or at $NETMANGLE_URL
(``http://127.0.0.1:8474``) with the token in $NETMANGLE_TOKEN or $NETMANGLE_TOKEN_FILE.
Errors the service answers are ServiceError: its one-line message, hint, HTTP status and
where (``at``: the field, and in a rule the column).
"""

import http.client
import json
import os
import socket
import urllib.parse

__all__ = ["Client", "Fault", "ServiceError", "DEFAULT_SOCKET"]

DEFAULT_SOCKET = "/run/netmangle.sock"

# Python names of the trigger options, as the service spells them.
_FIELDS = {
    "per_connection": "perConnection",
    "start_after": "startAfter",
    "for_": "for",
}


class ServiceError(Exception):
    """An error answer of the service (status 0: no service to answer)."""

    def __init__(self, status, error, hint=None, at=None):
        super().__init__(error)
        self.status = status
        self.error = error
        self.hint = hint
        self.at = at or {}

    def __str__(self):
        return self.error if not self.hint else "%s\n  %s" % (self.error, self.hint)


class _UnixHTTPConnection(http.client.HTTPConnection):
    """HTTP over a unix socket: the host name is only what goes in the Host header."""

    def __init__(self, path, timeout):
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


def _spec_fields(fields):
    return {_FIELDS.get(k, k): v for k, v in fields.items()}


class Client:
    """The service's routes as methods. One connection per request: safe across threads."""

    def __init__(self, socket_path=None, url=None, token=None, token_file=None, timeout=30.0):
        url = url or (None if socket_path else os.environ.get("NETMANGLE_URL"))
        self.url = urllib.parse.urlsplit(url) if url else None
        self.socket_path = None if self.url else (socket_path or os.environ.get("NETMANGLE_SOCKET") or DEFAULT_SOCKET)
        token_file = token_file or os.environ.get("NETMANGLE_TOKEN_FILE")
        if token is None and token_file:
            with open(token_file, encoding="utf-8") as f:
                token = f.readline().strip()
        self._token = token or os.environ.get("NETMANGLE_TOKEN")
        self.timeout = timeout
        # Faults attached through this client and not detached through it: detach_all's list.
        self._mine = []

    # ------------------------------------------------------------------ transport

    def _connection(self):
        if self.url:
            return http.client.HTTPConnection(self.url.hostname, self.url.port or 80, timeout=self.timeout)
        return _UnixHTTPConnection(self.socket_path, self.timeout)

    def _request(self, method, path, body=None, raw=False):
        headers = {"Accept": "application/json"}
        payload = None
        if body is not None:
            payload = json.dumps(body).encode("utf-8")
            headers["Content-Type"] = "application/json"
        if self._token:
            headers["Authorization"] = "Bearer " + self._token
        conn = self._connection()
        where = self.url.netloc if self.url else self.socket_path
        try:
            conn.request(method, path, body=payload, headers=headers)
            resp = conn.getresponse()
            data = resp.read().decode("utf-8")
        except (FileNotFoundError, ConnectionRefusedError) as err:
            raise ServiceError(0, "no netmangle service at %s (%s)" % (where, type(err).__name__), "start one with: netmangle serve") from None
        except PermissionError:
            raise ServiceError(0, "cannot connect to %s: permission denied" % where, "the socket is mode 0600: run as root") from None
        finally:
            conn.close()
        if resp.status >= 400:
            try:
                e = json.loads(data)
            except ValueError:
                raise ServiceError(resp.status, "HTTP %d: %s" % (resp.status, data[:200])) from None
            raise ServiceError(resp.status, e.get("error", "HTTP %d" % resp.status), e.get("hint"), e.get("at"))
        if raw:
            return data
        return json.loads(data) if data else None

    @staticmethod
    def _path(name):
        return "/faults/" + urllib.parse.quote(name, safe="")

    # ------------------------------------------------------------------ routes

    def version(self):
        return self._request("GET", "/version")

    def list(self):
        """Every fault of the service (without counters)."""
        return self._request("GET", "/faults")

    def get(self, name):
        """One fault, with its counters."""
        return self._request("GET", self._path(name))

    def create(self, spec):
        """POST /faults with a spec as the service takes it (camelCase fields); the fault."""
        info = self._request("POST", "/faults", spec)
        self._mine.append(info["name"])
        return info

    def attach(self, rules, dev, hook, netns=None, name=None, **options):
        """Attaches rules (a string or a list) and returns a Fault, a context manager that
        detaches it. options: the triggers (probability, every, first, after, per_connection,
        connections, limit, start_after, for_, checksum, lengths), seed and ttl."""
        spec = {"name": name or "netmangle-py-%d-%d" % (os.getpid(), len(self._mine) + 1),
                "rules": rules, "dev": dev, "hook": hook}
        if netns is not None:
            spec["netns"] = netns
        spec.update(_spec_fields(options))
        return Fault(self, self.create(spec))

    def fault(self, name):
        """A Fault handle for a fault that exists already (made by populate, another client)."""
        return Fault(self, self.get(name))

    def patch(self, name, **changes):
        """Changes rules, triggers or the lease (None removes one); {'fault': …, 'replaced': 'atomically' | 'detach-attach' | 'unchanged'}."""
        return self._request("PATCH", self._path(name), _spec_fields(changes))

    def delete(self, name):
        self._request("DELETE", self._path(name))
        if name in self._mine:
            self._mine.remove(name)

    def renew(self, name, ttl=None):
        return self._request("POST", self._path(name) + "/renew", None if ttl is None else {"ttl": ttl})

    def populate(self, specs):
        """Makes the listed faults exist; {'created', 'replaced', 'unchanged', 'faults'}."""
        result = self._request("POST", "/populate", list(specs))
        self._mine.extend(n for n in result["created"] if n not in self._mine)
        return result

    def reset(self):
        """Detaches every fault of the service; their names."""
        self._mine.clear()
        return self._request("POST", "/reset")["detached"]

    def metrics(self):
        """The Prometheus text of GET /metrics."""
        return self._request("GET", "/metrics", raw=True)

    def detach_all(self):
        """Detaches the faults attached through this client that are still there."""
        for name in list(self._mine):
            try:
                self.delete(name)
            except ServiceError as err:
                if err.status != 404:
                    raise
                self._mine.remove(name)

    def close(self):
        """Nothing stays open between requests; here for `with Client() as nm:`."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


class Fault:
    """A fault attached by the service; `with` detaches it at the end of the block."""

    def __init__(self, client, info):
        self.client = client
        self.info = info
        self.detached = False

    @property
    def name(self):
        return self.info["name"]

    @property
    def seed(self):
        return self.info["seed"]

    @property
    def programs(self):
        return self.info["programs"]

    def counters(self):
        """{'rules': [{'name', 'text', 'matched', 'acted', 'dropped', 'held', …}], 'delayLines': […], 'gsoPackets': n}"""
        return self.client.get(self.name)["counters"]

    def update(self, **changes):
        """Changes rules or triggers; 'atomically' when the program was swapped in one step."""
        result = self.client.patch(self.name, **changes)
        self.info = result["fault"]
        return result["replaced"]

    def renew(self, ttl=None):
        self.info = self.client.renew(self.name, ttl)

    def detach(self):
        """Detaches the fault; one already gone (expired, reset) is not an error."""
        if self.detached:
            return
        try:
            self.client.delete(self.name)
        except ServiceError as err:
            if err.status != 404:
                raise
        self.detached = True

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.detach()
        return False


try:
    import pytest
except ImportError:  # the client works without pytest; only the fixture needs it
    pytest = None

if pytest is not None:

    @pytest.fixture
    def netmangle():
        """A Client of the service ($NETMANGLE_SOCKET, or $NETMANGLE_URL and a token); every fault
        the test attached through it is detached afterwards, whether the test passed or not."""
        client = Client()
        try:
            yield client
        finally:
            client.detach_all()
            client.close()
