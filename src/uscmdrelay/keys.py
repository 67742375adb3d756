"""auth.conf: who may run what. Keys, hashed keys, cluster grants, source addresses.

Keys are only ever held as their sha256 digests, and every message names a key's section
by a fingerprint, never by the key.
"""

import re

from .fingerprint import (HASHED_KEY, HASHED_KEY_PREFIX, hide_key, key_digest,
                          key_fingerprint)
from .ini import ConfigError

# Spelled in `fingerprint`, used from here by the rest of the package.
__all__ = ["ALL_CLUSTERS", "AUTH_OPTIONS", "HASHED_KEY_PREFIX", "KeyGrant", "hide_key",
           "key_digest", "key_fingerprint", "parse_auth", "parse_cluster_list",
           "parse_networks", "warn_about_references"]

ALL_CLUSTERS = "*"
AUTH_OPTIONS = ("auth_clusters", "description", "allowed_hosts")
# What an address or network typo looks like (10.0.0.300, fe80::1%eth0, 10.0.0.0/33): hex
# digits with at least one '.' or ':'. A key pasted into allowed_hosts is not.
_ADDRESS_LIKE = re.compile(r"(?=[^.:]*[.:])[0-9A-Fa-f.:/%]{1,64}\Z")
WEAK_KEY_CHARS = 16
# samples/auth.sample.conf's keys are "replace-me-with-a-long-random-key-N": a copied
# sample must not work as it stands.
PLACEHOLDER_KEY_TEXT = "replace-me"
MAKE_A_KEY = "uscmdrelay hash-key --generate"


class KeyGrant(object):
    """What one auth key may do: `clusters` (a frozenset, or ALL_CLUSTERS), `networks`
    (the client addresses it may come from; None for any) and its log `label`."""

    __slots__ = ("label", "clusters", "networks", "section", "path")

    def __init__(self, label, clusters, networks=None, section=None, path=None):
        self.label = label
        self.clusters = clusters
        self.networks = networks
        self.section = section or label  # how messages name its section: never the key
        self.path = path  # the file that defines it

    def allows(self, cluster):
        return self.clusters == ALL_CLUSTERS or cluster in self.clusters

    def allows_address(self, address):
        """True if a client at `address` (text) may use this key."""
        if self.networks is None:
            return True
        import ipaddress  # already loaded: parse_networks made self.networks
        try:
            ip = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            return False
        # An IPv4 client on a dual-stack socket shows up as ::ffff:a.b.c.d.
        if ip.version == 6 and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip.version == network.version and ip in network
                   for network in self.networks)


def parse_auth(parser, path, warnings, allow_empty=False):
    """Returns {sha256 digest: KeyGrant} from a parsed auth.conf; raises ConfigError.

    A section is a key, or `sha256:<64 hex digits>`, the digest of one (a hashed key).
    A file with no key gets a warning unless `allow_empty` (the caller checks the total).
    """
    keys = {}
    for key in parser.sections():
        name = hide_key(key)
        if key != key.strip() or not key:
            raise ConfigError(path, "an auth key may not start or end with white space",
                              name)
        for option in parser.options(key):
            if option not in AUTH_OPTIONS:
                # Not named: it may be a key typed without brackets ("abc==" is the
                # option "abc"). Its line says which it is.
                line = getattr(parser, "lines", {}).get((key, option))
                raise ConfigError(path, "%sunknown option (expected one of: %s; a key goes "
                                  "in brackets)" % ("" if line is None else "line %d: " % line,
                                                    ", ".join(AUTH_OPTIONS)), name)
        if not parser.has_option(key, "auth_clusters"):
            raise ConfigError(path, "missing; list the clusters this key may use, or '*' "
                              "for all", name, "auth_clusters")
        clusters = parse_cluster_list(parser.get(key, "auth_clusters"), path, name)
        networks = None
        if parser.has_option(key, "allowed_hosts"):
            networks = parse_networks(parser.get(key, "allowed_hosts"), path, name)
        digest = _section_digest(key, path, warnings)
        if digest in keys:
            raise ConfigError(path, "this key is defined twice (plain and hashed?)", name)
        description = parser.get(key, "description", fallback="").strip()
        keys[digest] = KeyGrant(description or name[len("key "):], clusters, networks, name,
                                path)
    if not keys and not allow_empty:
        warnings.append("%s: no keys defined; every request will be refused" % path)
    return keys


def _section_digest(key, path, warnings):
    """The digest a section stands for: its own for a hashed key, else the key's."""
    if key.startswith(HASHED_KEY_PREFIX):
        match = HASHED_KEY.match(key)
        if match is None:
            raise ConfigError(path, "a hashed key is 'sha256:' and 64 lowercase hex digits "
                              "(uscmdrelay hash-key prints one)", hide_key(key))
        return bytes.fromhex(match.group(1))
    if PLACEHOLDER_KEY_TEXT in key.lower():
        raise ConfigError(path, "this key is a placeholder from the sample, not a secret; "
                          "replace the section name with a long random key, or its hash "
                          "('%s' prints both)" % MAKE_A_KEY, hide_key(key))
    if len(key) < WEAK_KEY_CHARS:
        warnings.append("%s: [%s] the key is shorter than %d characters; use a long "
                        "random key ('%s' makes one)"
                        % (path, hide_key(key), WEAK_KEY_CHARS, MAKE_A_KEY))
    return key_digest(key)


def parse_networks(value, path, section):
    """Returns a tuple of ip_network from `allowed_hosts`; raises ConfigError."""
    # Imported here: most configurations have no allowed_hosts, and ipaddress costs ~3 ms
    # of start-up.
    import ipaddress
    entries = value.replace(",", " ").split()
    if not entries:
        raise ConfigError(path, "empty; list addresses or networks (or remove the line to "
                          "allow any address)", section, "allowed_hosts")
    networks = []
    for number, entry in enumerate(entries, start=1):
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            # Quoted only if it looks like an address: a key pasted here is not shown.
            if _ADDRESS_LIKE.match(entry):
                problem = "%r is not an IP address or network" % entry
            else:
                problem = ("entry %d is not an IP address or network (host names are not "
                           "accepted; not quoted, as it may be a key)" % number)
            raise ConfigError(path, problem, section, "allowed_hosts")
    return tuple(networks)


def parse_cluster_list(value, path, section):
    """Returns frozenset of cluster names, or ALL_CLUSTERS; raises ConfigError."""
    names = value.replace(",", " ").split()
    if not names:
        raise ConfigError(path, "empty; list the clusters this key may use, or '*' for all",
                          section, "auth_clusters")
    if ALL_CLUSTERS in names:
        if len(names) > 1:
            raise ConfigError(path, "'*' means all clusters and cannot be combined with "
                              "names", section, "auth_clusters")
        return ALL_CLUSTERS
    return frozenset(names)


def warn_about_references(keys, clusters, path, relays_name, warnings):
    """Warns about clusters granted to a key that no relays file defines."""
    for grant in sorted(keys.values(), key=lambda grant: grant.section):
        if grant.clusters == ALL_CLUSTERS:
            continue
        for cluster in sorted(grant.clusters - set(clusters)):
            warnings.append("%s: [%s] auth_clusters: cluster %r is not defined in %s"
                            % (grant.path or path, grant.section, cluster, relays_name))
