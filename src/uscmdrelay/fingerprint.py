"""How a key is stored and how it is named where people can see it: its sha256 digest and
its fingerprint. One home for both spellings, below `ini` and `keys`, which both use them.
"""

import re

try:
    # hashlib loads OpenSSL's libcrypto, which costs the server ~3.5 MB of memory and
    # ~4 ms of start-up for the one hash it needs. Like the stdlib's random.py, take the
    # built-in module first: _sha2 from 3.12 on, _sha256 before; hashlib if a build has
    # neither.
    from _sha2 import sha256
except ImportError:
    try:
        from _sha256 import sha256
    except ImportError:
        from hashlib import sha256

HASHED_KEY_PREFIX = "sha256:"
HASHED_KEY = re.compile(r"sha256:([0-9a-f]{64})\Z")
FINGERPRINT_HEX_DIGITS = 12


def key_digest(key):
    """Returns the sha256 digest (bytes) under which a key is stored and looked up."""
    return sha256(key.encode("utf-8")).digest()


def hashed_key_section(key):
    """The auth.conf section name that stands for `key` without holding it:
    `sha256:` and the 64 hex digits of its digest (`hash-key` prints it in brackets)."""
    return HASHED_KEY_PREFIX + key_digest(key).hex()


def digest_fingerprint(digest):
    """`sha256:` and the first hex digits of a digest: how logs name a key."""
    return HASHED_KEY_PREFIX + digest.hex()[:FINGERPRINT_HEX_DIGITS]


def key_fingerprint(key):
    """A short name for a key with no description, safe to log: it does not reveal the key."""
    return digest_fingerprint(key_digest(key))


def hide_key(key):
    """How messages name a key's section: never the key, only a fingerprint of it (a
    hashed key's section is its own fingerprint already)."""
    match = HASHED_KEY.match(key)
    if match is not None:
        return "key " + digest_fingerprint(bytes.fromhex(match.group(1)))
    return "key " + key_fingerprint(key)
