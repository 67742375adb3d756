"""The places connections take: --max-connections and --max-connections-per-host.

A connection holds a place from the moment it is let in until its reply is written (or
it is dropped); a connection refused for lack of a place never holds one. This is only
the bookkeeping: the server asks `refusal` before it lets one in, and closes.
"""


class ConnectionSlots(object):
    """Counts the connections let in, in all (at most `limit`) and per client address
    (at most `per_host_limit`; 0: no limit per address)."""

    def __init__(self, limit, per_host_limit):
        self.limit = limit
        self.per_host_limit = per_host_limit
        self._hosts = {}  # sock -> its host_key
        self._per_host = {}  # host_key -> connections in self._hosts

    def __len__(self):
        return len(self._hosts)

    def refusal(self, address):
        """Returns why a connection from `address` may not come in now (a message for
        its 3004 reply), or None when it may."""
        if len(self._hosts) >= self.limit:
            return "server busy: --max-connections (%d) reached" % self.limit
        host = host_key(address)
        limit = self.per_host_limit
        if limit and self._per_host.get(host, 0) >= limit:
            # One address must not take every place (sshd's PerSourceMaxStartups).
            return ("server busy: --max-connections-per-host (%d) reached for %s"
                    % (limit, host))
        return None

    def take(self, sock, address):
        """Counts `sock`, a connection from `address`, until `release(sock)`."""
        host = host_key(address)
        self._hosts[sock] = host
        self._per_host[host] = self._per_host.get(host, 0) + 1

    def move(self, old, new):
        """The place of `old` is now `new`'s: the same connection as a new object (a
        socket wrapped for TLS)."""
        self._hosts[new] = self._hosts.pop(old)

    def release(self, sock):
        """Frees the place of `sock`; one that holds none (refused, or freed already) is
        fine."""
        host = self._hosts.pop(sock, None)
        if host is None:
            return
        count = self._per_host[host] - 1
        if count:
            self._per_host[host] = count
        else:
            del self._per_host[host]

    def count(self, address):
        """How many places connections from `address` hold."""
        return self._per_host.get(host_key(address), 0)


def host_key(address):
    """The client address that --max-connections-per-host counts: the IP address, all
    ports together, an IPv4-mapped IPv6 address as the IPv4 one."""
    host = address[0] if address else ""
    if host.startswith("::ffff:") and "." in host:
        return host[7:]
    return host
