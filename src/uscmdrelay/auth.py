"""Deciding whether a request may run: key, source address, cluster grant, argument policy.

Sans-IO: `authorize` takes a loaded `Config` and a `Request` and returns what to run, or
raises the `RelayError` to answer with. It never runs anything and never logs the key.
"""

from .keys import key_digest
from .protocol import (ADDRESS_NOT_ALLOWED, AUTH_FAILED, CLUSTER_NOT_ALLOWED,
                       UNKNOWN_CLUSTER, UNKNOWN_COMMAND, RelayError)


class Decision(object):
    """An authorized request: the key's `grant` (with its log label) and the `command`."""

    __slots__ = ("grant", "command")

    def __init__(self, grant, command):
        self.grant = grant
        self.command = command


def authenticate(config, auth_key):
    """Returns the KeyGrant for `auth_key`, or raises RelayError(1001).

    Keys are looked up by their sha256 digest, plain and hashed keys alike: the time
    taken depends on the digest, not on how many leading characters of a secret a guess
    got right (no string comparison ever runs on the secret itself).
    """
    grant = config.keys.get(key_digest(auth_key))
    if grant is None:
        raise RelayError(AUTH_FAILED, "authentication failed")
    return grant


def check_client_address(grant, client_address):
    """Raises RelayError(1003) if the key has `allowed_hosts` and `client_address`
    (text) is not among them."""
    if not grant.allows_address(client_address):
        raise RelayError(ADDRESS_NOT_ALLOWED)


def authorize(config, request, grant=None):
    """Returns the `Decision` for a request, or raises the RelayError to answer with.

    The order is fixed: key, then cluster grant, then cluster, then command, then the
    command's argument policy (2007). A key that is
    not granted a cluster gets 1002 whether or not the cluster exists, so a key cannot
    probe which clusters are configured. `grant`, when the caller already authenticated
    the key (to log who asked even if refused), skips the first step.
    """
    if grant is None:
        grant = authenticate(config, request.auth_key)
    if not grant.allows(request.cluster):
        raise RelayError(CLUSTER_NOT_ALLOWED,
                         "this key may not use cluster %r" % request.cluster)
    commands = config.clusters.get(request.cluster)
    if commands is None:
        raise RelayError(UNKNOWN_CLUSTER, "unknown cluster %r" % request.cluster)
    command = commands.get(request.name)
    if command is None:
        raise RelayError(UNKNOWN_COMMAND, "unknown command %r in cluster %r"
                         % (request.name, request.cluster))
    command.policy.check(request.arguments)
    return Decision(grant, command)


def visible_commands(config, grant):
    """Returns the Commands `grant` may run, sorted by cluster and name (for `::list`)."""
    return [config.clusters[cluster][name]
            for cluster in sorted(config.clusters) if grant.allows(cluster)
            for name in sorted(config.clusters[cluster])]
