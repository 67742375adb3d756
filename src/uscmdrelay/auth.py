"""Deciding whether a request may run: the README's "Order of checks", top to bottom.

Sans-IO: `authorize` takes a loaded `Config`, a `Request` and the client's address and
returns a `Decision` (what to run, or what to list), or raises the `Refused` error to
answer with. It never runs anything and never logs the key.
"""

from .codes import (ADDRESS_NOT_ALLOWED, AUTH_FAILED, CLUSTER_NOT_ALLOWED,
                    UNKNOWN_CLUSTER, UNKNOWN_COMMAND, RelayError)
from .keys import key_digest


class Decision(object):
    """An authorized request: the key's `grant` (with its log label), and either the
    `relay` to run (a config.Command) or, for `::list`, the `listing` of the Commands the
    key may run (and `relay` None)."""

    __slots__ = ("grant", "relay", "listing")

    def __init__(self, grant, relay=None, listing=None):
        self.grant = grant
        self.relay = relay
        self.listing = listing


class Refused(RelayError):
    """A refused request. `grant` is the key's KeyGrant when the key itself was valid
    (so the audit line of a 1003, 1002, 2003, 2004 or 2007 says which key asked), else
    None."""

    def __init__(self, code, message=None, grant=None):
        RelayError.__init__(self, code, message)
        self.grant = grant


def authorize(config, request, client_address):
    """Returns the `Decision` for `request` from `client_address` (text; "" when
    unknown), or raises `Refused`.

    The order is fixed: key (1001), source address (1003), cluster grant (1002),
    cluster exists (2003), command exists (2004), argument policy (2007). A key that is
    not granted a cluster gets 1002 whether or not the cluster exists, so a key cannot
    probe which clusters are configured.
    """
    grant = authenticate(config, request.auth_key)
    try:
        if not grant.allows_address(client_address):
            raise RelayError(ADDRESS_NOT_ALLOWED)
        if request.is_list:
            return Decision(grant, listing=visible_commands(config, grant))
        if not grant.allows(request.cluster):
            raise RelayError(CLUSTER_NOT_ALLOWED,
                             "this key may not use cluster %r" % request.cluster)
        commands = config.clusters.get(request.cluster)
        if commands is None:
            raise RelayError(UNKNOWN_CLUSTER, "unknown cluster %r" % request.cluster)
        relay = commands.get(request.name)
        if relay is None:
            raise RelayError(UNKNOWN_COMMAND, "unknown command %r in cluster %r"
                             % (request.name, request.cluster))
        relay.policy.check(request.arguments)
    except RelayError as error:
        raise Refused(error.code, error.message, grant)
    return Decision(grant, relay=relay)


def authenticate(config, auth_key):
    """Returns the KeyGrant for `auth_key`, or raises Refused(1001).

    Keys are looked up by their sha256 digest, plain and hashed keys alike: the time
    taken depends on the digest, not on how many leading characters of a secret a guess
    got right (no string comparison ever runs on the secret itself).
    """
    grant = config.keys.get(key_digest(auth_key))
    if grant is None:
        raise Refused(AUTH_FAILED, "authentication failed")
    return grant


def visible_commands(config, grant):
    """Returns the Commands `grant` may run, sorted by cluster and name (for `::list`)."""
    return [config.clusters[cluster][name]
            for cluster in sorted(config.clusters) if grant.allows(cluster)
            for name in sorted(config.clusters[cluster])]
