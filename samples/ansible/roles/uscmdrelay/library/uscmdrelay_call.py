#!/usr/bin/python
# -*- coding: utf-8 -*-

# Copyright: the uscmdrelay authors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

"""Ansible module uscmdrelay_call: runs one command through a uscmdrelay server.

Everything but main() works without Ansible (the unit tests in tests/test_ansible_module.py
import this file on every interpreter the project supports). It speaks the relay protocol
itself rather than importing uscmdrelay: the module runs wherever Ansible runs it (usually
the controller, with delegate_to: localhost), where the uscmdrelay package is not
installed. The protocol bits it needs are small: one JSON line out, one JSON line back
(README.md, "Protocol").
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: uscmdrelay_call
short_description: Runs a command through a uscmdrelay server
description:
  - Sends one request to a uscmdrelay server (a relay) and returns the reply, like
    C(uscmdrelay call) does. The relay runs one of its configured commands and answers
    with the command's exit status and output.
  - The module opens a TCP connection from the host the task runs on; it needs no SSH to
    the relay's host. The usual way is C(delegate_to=localhost) with
    O(host) set to the inventory host's address, so Ansible's forks, C(serial), C(throttle)
    and C(--limit) schedule the calls over an inventory.
  - Standard library only (Python 3.6 or newer); the uscmdrelay package is not needed.
options:
  host:
    description:
      - The relay's name or address.
      - With C(delegate_to=localhost), use the inventory host's address, C(ansible_host)
        or else C(inventory_hostname), as in the examples.
    type: str
    required: true
  port:
    description:
      - The relay's TCP port (1 to 65535).
    type: int
    default: 7777
  command:
    description:
      - The command to run, C(name) (the C(default) cluster) or C(cluster::name), as
        configured in the relay's relays.conf. C(::list) lists the commands the key may run
        (in RV(stdout), as the JSON list of the reply's C(commands)).
    type: str
    required: true
  arguments:
    description:
      - The command's arguments, one list item each; the relay's per-command policy decides
        which it accepts.
    type: list
    elements: str
    default: []
  auth_key:
    description:
      - The key (a section of the relay's auth.conf). Keep it in Ansible Vault.
      - It is never shown in the task's output, also not with C(-vvv).
      - Exactly one of O(auth_key) and O(auth_key_file) is required.
    type: str
  auth_key_file:
    description:
      - A file holding the key (surrounding whitespace is ignored), on the host the module
        runs on (the controller with C(delegate_to=localhost)).
      - Exactly one of O(auth_key) and O(auth_key_file) is required.
    type: path
  timeout:
    description:
      - Seconds the whole call may take (connecting, TLS, the command, the reply),
        more than 0, at most 604800. A call that gives up resets its connection, so the
        relay frees its place at once (the command runs on).
    type: float
    default: 60
  tls:
    description:
      - Connect with TLS (1.2 or newer), verifying the relay's certificate.
      - Implied by any of O(tls_ca), O(tls_cert), O(tls_key), O(tls_server_name), so a
        forgotten O(tls) never sends the key in clear text.
    type: bool
    default: false
  tls_ca:
    description:
      - CA certificate(s) to verify the relay with; default the system's CAs.
    type: path
  tls_cert:
    description:
      - Client certificate (mutual TLS), with its key unless O(tls_key) is given.
    type: path
  tls_key:
    description:
      - The key of O(tls_cert), when not in the same file. Requires O(tls_cert).
    type: path
  tls_server_name:
    description:
      - The name the relay's certificate must match; default O(host).
    type: str
  fail_on_error:
    description:
      - Fail the task when the relay answers with a non-zero RV(code), that is when the command exited
        non-zero (3001), was refused (10xx, 20xx), could not start, timed out, or the relay
        was busy.
      - With V(false) the task succeeds with the reply's RV(code), RV(rc) and output, for
        C(failed_when) to judge. A call that got no reply at all (connection refused, TLS
        failure, timeout, not a relay) fails the task either way.
    type: bool
    default: true
  check_mode_safe:
    description:
      - In check mode (C(--check)) the command is not run, because a relay command can
        change its host; the task is skipped, saying so. V(true) declares the command
        read-only, and it runs in check mode too.
    type: bool
    default: false
attributes:
  check_mode:
    support: partial
    details: the command runs in check mode only with O(check_mode_safe=true)
  diff_mode:
    support: none
  platform:
    platforms: posix
notes:
  - RV(rc) is the relay's C(exit_code) as it is, negative when the command was killed by a
    signal (V(-9) for SIGKILL), like the C(rc) of M(ansible.builtin.command);
    C(uscmdrelay call) instead exits 128+N, like a shell.
  - RV(changed) is V(true) when the command ran (whatever its exit status); use
    C(changed_when) for commands that change nothing.
  - "The relay's reply codes: 0 success; 1001 unknown key; 1002 cluster not allowed for the
    key; 1003 client address not allowed; 2001-2007 bad request (2004 unknown command,
    2007 arguments refused by the command's policy); 3001 the command exited non-zero;
    3002 it could not start; 3003 timed out and killed; 3004 relay busy; 3005 already
    running; 9999 relay bug. See the Codes section of uscmdrelay's README.md."
author:
  - uscmdrelay authors
"""

EXAMPLES = r"""
- name: Run backup::status on every backup host, from the controller
  uscmdrelay_call:
    host: "{{ ansible_host | default(inventory_hostname) }}"
    port: "{{ relay_port | default(7777) }}"
    command: backup::status
    auth_key: "{{ relay_key }}"          # from an ansible-vault encrypted vars file
  delegate_to: localhost
  changed_when: false                    # a status query changes nothing
  register: backup_status

- name: Free space of /var, over TLS with a private CA, read-only so also in --check
  uscmdrelay_call:
    host: "{{ ansible_host | default(inventory_hostname) }}"
    command: disk-free
    arguments: [/var]
    auth_key_file: /etc/ansible/relay.key
    tls_ca: /etc/ansible/relay-ca.pem    # implies tls: true
    check_mode_safe: true
  delegate_to: localhost
  changed_when: false

- name: Restart nginx; judge the reply ourselves
  uscmdrelay_call:
    host: "{{ ansible_host | default(inventory_hostname) }}"
    command: web::restart
    arguments: [nginx]
    auth_key: "{{ relay_key }}"
    timeout: 120
    fail_on_error: false
  delegate_to: localhost
  register: restart
  failed_when: restart.code not in [0, 3005]   # 3005: a restart is already running
"""

RETURN = r"""
code:
  description:
    - The relay's reply code, 0 for success (see the module's notes).
    - V(null) when no reply was received (connection refused, TLS failure, timeout) or in
      check mode.
  returned: always
  type: int
  sample: 0
rc:
  description:
    - The command's exit status; negative when it was killed by that signal (V(-15)
      SIGTERM, V(-9) SIGKILL, also after a timeout, code 3003).
    - V(null) when the command did not run.
  returned: always
  type: int
  sample: 0
stdout:
  description: The command's standard output (invalid UTF-8 became U+FFFD).
  returned: always
  type: str
  sample: "backup.service is active\n"
stdout_lines:
  description: RV(stdout) split into lines.
  returned: always
  type: list
  elements: str
  sample: [backup.service is active]
stderr:
  description: The command's standard error.
  returned: always
  type: str
  sample: ""
stderr_lines:
  description: RV(stderr) split into lines.
  returned: always
  type: list
  elements: str
  sample: []
msg:
  description:
    - On success, the relay's message (stdout without trailing newlines).
    - On failure, why, with the code; C(cannot connect to HOST port PORT ...) or
      C(TLS with HOST port PORT failed ...) when there was no reply.
  returned: always
  type: str
  sample: "authentication failed (code 1001)"
duration_ms:
  description: How long the command ran, in milliseconds; V(null) when it did not run.
  returned: always
  type: float
  sample: 12.3
truncated:
  description: V(true) when output beyond the relay's C(--max-output) was dropped.
  returned: always
  type: bool
  sample: false
changed:
  description: V(true) when the command ran (codes 0, 3001, 3003), whatever its exit status.
  returned: always
  type: bool
  sample: true
"""

import json
import os
import socket
import struct
import sys
import time

try:
    from ansible.module_utils.basic import AnsibleModule
except ImportError:  # the unit tests import this file without Ansible
    AnsibleModule = None

DEFAULT_PORT = 7777
DEFAULT_TIMEOUT_SECONDS = 60.0
MAX_TIMEOUT_SECONDS = 604800.0
MAX_REPLY_BYTES = 64 * 1024 * 1024
# Reply codes (README.md, "Codes"): success, and "the command ran and exited non-zero".
OK = 0
COMMAND_FAILED = 3001
COMMAND_TIMED_OUT = 3003
TLS_OPTIONS = ("tls_ca", "tls_cert", "tls_key", "tls_server_name")

ARGUMENT_SPEC = dict(
    host=dict(type="str", required=True),
    port=dict(type="int", default=DEFAULT_PORT),
    command=dict(type="str", required=True),
    arguments=dict(type="list", elements="str", default=[]),
    auth_key=dict(type="str", no_log=True),
    auth_key_file=dict(type="path", no_log=False),
    timeout=dict(type="float", default=DEFAULT_TIMEOUT_SECONDS),
    tls=dict(type="bool", default=False),
    tls_ca=dict(type="path"),
    tls_cert=dict(type="path"),
    tls_key=dict(type="path", no_log=False),
    tls_server_name=dict(type="str"),
    fail_on_error=dict(type="bool", default=True),
    check_mode_safe=dict(type="bool", default=False),
)
MUTUALLY_EXCLUSIVE = [["auth_key", "auth_key_file"]]
REQUIRED_ONE_OF = [["auth_key", "auth_key_file"]]


class CallError(Exception):
    """The call failed; str() is the message for the task (never holding the key), and
    `.code` the relay's code, or None when no reply was received."""

    def __init__(self, message, code=None):
        Exception.__init__(self, message)
        self.code = code


def with_defaults(params):
    """`params` with every option present (the defaults of ARGUMENT_SPEC filled in), as
    AnsibleModule would pass them."""
    full = dict((name, spec.get("default")) for name, spec in ARGUMENT_SPEC.items())
    full.update(params)
    if full["arguments"] is None:
        full["arguments"] = []
    return full


def check_params(params):
    """Checks what the argument spec cannot; raises CallError with the option's name."""
    if not params.get("host"):
        raise CallError("host: must not be empty")
    if not params.get("command"):
        raise CallError("command: must not be empty")
    port = params.get("port")
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise CallError("port: %r is not a port number (1 to 65535)" % (port,))
    timeout = params.get("timeout")
    if (isinstance(timeout, bool) or not isinstance(timeout, (int, float))
            or not 0 < timeout <= MAX_TIMEOUT_SECONDS):  # also refuses nan
        raise CallError("timeout: %r is not a number of seconds (more than 0, at most %d)"
                        % (timeout, MAX_TIMEOUT_SECONDS))
    arguments = params.get("arguments") or []
    if not isinstance(arguments, list) or not all(isinstance(a, str) for a in arguments):
        raise CallError("arguments: must be a list of strings")
    if params.get("auth_key") is not None and params.get("auth_key_file") is not None:
        raise CallError("parameters are mutually exclusive: auth_key|auth_key_file")
    if params.get("auth_key") is None and params.get("auth_key_file") is None:
        raise CallError("one of the following is required: auth_key, auth_key_file")
    if params.get("tls_key") and not params.get("tls_cert"):
        raise CallError("tls_key: needs tls_cert (the certificate it belongs to)")


def read_key(params):
    """The auth key from auth_key or auth_key_file; raises CallError (naming the file,
    never its content)."""
    if params.get("auth_key_file") is not None:
        path = params["auth_key_file"]
        try:
            with open(path, "rb") as handle:
                key = handle.read().decode("utf-8").strip()
        except OSError as error:
            raise CallError("auth_key_file: cannot read %s: %s"
                            % (path, error.strerror or type(error).__name__))
        except UnicodeDecodeError:
            raise CallError("auth_key_file: %s is not UTF-8 text" % path)
        if not key:
            raise CallError("auth_key_file: %s is empty" % path)
        return key
    key = params.get("auth_key")
    if not key:
        raise CallError("auth_key: must not be empty")
    return key


def uses_tls(params):
    """True with tls or any other tls_* option (like `uscmdrelay call`)."""
    return bool(params.get("tls")) or any(params.get(name) is not None
                                          for name in TLS_OPTIONS)


def build_request(key, command, arguments):
    """The request line: one JSON object and a newline, as bytes."""
    body = {"auth_key": key, "command": command}
    if arguments:
        body["arguments"] = list(arguments)
    return (json.dumps(body) + "\n").encode("utf-8")


def where(host, port):
    return "%s port %d" % (host, port)


def parse_reply(raw, host, port):
    """The reply object from the bytes received (one JSON line); raises CallError when
    they are not a relay's reply."""
    line = raw.split(b"\n", 1)[0]
    try:
        reply = json.loads(line.decode("utf-8"))
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        reply = None
    code = reply.get("code") if isinstance(reply, dict) else None
    if isinstance(code, bool) or not isinstance(code, int):
        raise CallError("%s sent no valid reply (%d bytes)" % (where(host, port), len(raw)))
    return reply


def _reason(error):
    """An exception's one-line reason (the ssl reason, else strerror, else str)."""
    ssl = sys.modules.get("ssl")  # imported only for TLS; PyPy's errors are not ssl's own
    is_ssl = ssl is not None and isinstance(error, ssl.SSLError)
    text = getattr(error, "reason", None) if is_ssl else None
    text = (text or getattr(error, "strerror", None) or str(error) or "").strip()
    return text.splitlines()[0] if text else type(error).__name__


def tls_context(params):
    """A client context that verifies the relay (TLS 1.2+); raises CallError naming the
    file that cannot be used."""
    import ssl  # only a TLS call pays for it
    for name in ("tls_ca", "tls_cert", "tls_key"):
        path = params.get(name)
        if path is not None:
            try:
                with open(path, "rb"):
                    pass
            except OSError as error:
                raise CallError("%s: cannot read %s: %s"
                                % (name, path, error.strerror or type(error).__name__))
    try:
        context = ssl.create_default_context(cafile=params.get("tls_ca"))
    except (OSError, ssl.SSLError) as error:
        raise CallError("tls_ca: %s: %s" % (params.get("tls_ca"), _reason(error)))
    if hasattr(context, "minimum_version"):
        context.minimum_version = ssl.TLSVersion.TLSv1_2
    else:  # Python 3.6
        context.options |= ssl.OP_NO_TLSv1 | ssl.OP_NO_TLSv1_1
    if params.get("tls_cert"):
        try:
            context.load_cert_chain(params["tls_cert"], params.get("tls_key"))
        except (OSError, ssl.SSLError) as error:
            raise CallError("tls_cert: cannot load %s: %s"
                            % (params["tls_cert"], _reason(error)))
    return context


def exchange(host, port, data, timeout, context=None, server_name=None,
             max_reply_bytes=MAX_REPLY_BYTES):
    """Sends `data` (a request line) and returns the raw reply: the bytes up to and with
    the first newline, or all of them if the relay closes first. Raises CallError naming
    host and port (and never the request, which holds the key)."""
    deadline = time.monotonic() + timeout
    place = where(host, port)
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except socket.timeout:
        raise CallError("cannot connect to %s: timed out" % place)
    except OSError as error:
        raise CallError("cannot connect to %s: %s" % (place, _reason(error)))
    try:
        if context is not None:
            try:
                sock = context.wrap_socket(sock, server_hostname=server_name or host)
            except (OSError, ValueError) as error:
                raise CallError("TLS with %s failed: %s" % (place, _reason(error)))
        try:
            _set_remaining(sock, deadline)
            sock.sendall(data)
            return _read_reply(sock, deadline, place, max_reply_bytes)
        except socket.timeout:
            _reset_on_close(sock)
            raise CallError("no reply from %s within %g s (timeout)" % (place, timeout))
        except OSError as error:
            raise CallError("connection to %s failed: %s" % (place, _reason(error)))
    finally:
        sock.close()


def _set_remaining(sock, deadline):
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise socket.timeout("timed out")
    sock.settimeout(remaining)


def _read_reply(sock, deadline, place, max_reply_bytes):
    chunks = []
    size = 0
    while True:
        _set_remaining(sock, deadline)
        try:
            data = sock.recv(65536)
        except OSError as error:
            # A TLS relay that closes without close_notify still sent a whole reply.
            if chunks and "EOF" in str(error):
                break
            raise
        if not data:
            break
        chunks.append(data)
        size += len(data)
        if size > max_reply_bytes:
            _reset_on_close(sock)
            raise CallError("%s sent a reply larger than %d bytes" % (place, max_reply_bytes))
        if b"\n" in data:
            break  # a reply is exactly one line
    return b"".join(chunks)


def _reset_on_close(sock):
    """Makes close() reset the connection, so a call that gives up frees its place at
    the relay at once (the relay cannot tell a plain close from a half-close)."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass


def _empty_result():
    return dict(changed=False, failed=False, code=None, rc=None, stdout="", stderr="",
                stdout_lines=[], stderr_lines=[], msg="", duration_ms=None, truncated=False)


def _text(value):
    return value if isinstance(value, str) else ""


def _int_or_none(value):
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _number_or_none(value):
    return _int_or_none(value) if not isinstance(value, float) else value


def result_from_reply(reply, fail_on_error=True):
    """The task result for a relay's reply: a dict with `failed` (set explicitly, so
    Ansible never judges by a non-zero rc itself) and every documented field."""
    result = _empty_result()
    code = reply["code"]
    rc = _int_or_none(reply.get("exit_code"))
    result.update(code=code, rc=rc, stdout=_text(reply.get("stdout")),
                  stderr=_text(reply.get("stderr")),
                  duration_ms=_number_or_none(reply.get("duration_ms")),
                  truncated=reply.get("truncated") is True,
                  changed=rc is not None)  # the command ran
    if isinstance(reply.get("commands"), list):  # ::list
        result["stdout"] = json.dumps(reply["commands"])
    result["stdout_lines"] = result["stdout"].splitlines()
    result["stderr_lines"] = result["stderr"].splitlines()
    message = _text(reply.get("message"))
    if code == OK:
        result["msg"] = message
        return result
    if code == COMMAND_FAILED and rc is not None:
        status = ("killed by signal %d" % -rc) if rc < 0 else ("exit status %d" % rc)
        message = "%s: %s" % (status, message) if message else status
    result["msg"] = "%s (code %d)" % (message or "error", code)
    result["failed"] = bool(fail_on_error)
    return result


def failure_result(error):
    """The task result for a CallError: failed, with its message and code."""
    result = _empty_result()
    result.update(failed=True, msg=str(error), code=error.code)
    return result


def check_mode_result(params):
    """The task result of a check-mode run that does not run the command, or None when
    the command may run (check_mode_safe)."""
    if params.get("check_mode_safe"):
        return None
    result = _empty_result()
    result.update(skipped=True, msg="check mode: %s was not run (check_mode_safe: false)"
                  % params.get("command"))
    return result


def run(params, check_mode=False, key=None):
    """Everything the module does, without Ansible: returns the task result (a dict with
    `failed`). `key` is the auth key when the caller read it already."""
    params = with_defaults(params)
    try:
        check_params(params)
        if key is None:
            key = read_key(params)
        skipped = check_mode_result(params) if check_mode else None
        if skipped is not None:
            return skipped
        context = tls_context(params) if uses_tls(params) else None
        raw = exchange(params["host"], params["port"],
                       build_request(key, params["command"], params["arguments"]),
                       params["timeout"], context, params.get("tls_server_name"))
        reply = parse_reply(raw, params["host"], params["port"])
    except CallError as error:
        return failure_result(error)
    return result_from_reply(reply, params["fail_on_error"])


def main():
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True,
                           mutually_exclusive=MUTUALLY_EXCLUSIVE,
                           required_one_of=REQUIRED_ONE_OF)
    params = dict(module.params)
    try:
        check_params(params)
        key = read_key(params)
    except CallError as error:
        result = failure_result(error)
        del result["failed"]
        module.fail_json(**result)
    # A key read from auth_key_file is as secret as auth_key: Ansible masks it wherever
    # it would appear in the result.
    module.no_log_values.add(key)
    result = run(params, module.check_mode, key)
    if result.pop("failed"):
        module.fail_json(**result)
    module.exit_json(failed=False, **result)


if __name__ == "__main__":
    main()
