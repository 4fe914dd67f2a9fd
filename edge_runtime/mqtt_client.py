"""The one MQTT client factory, shared by the device (edge_runtime/publish.py) and the central
server (server/subscriber.py): the `[mqtt]` settings, the password, TLS, credentials, the last
will, the port default and reconnect backoff. paho-mqtt 2.x, MQTT 3.1.1; paho is imported
only when a client is made, so reading the config needs no paho.

Connection problems are named, not just retried: `ConnectionMonitor` turns a failed attempt
into a cause a person can act on ("connection refused: nothing listening on host:1883",
"TLS certificate not trusted by CA file ca.crt", "Not authorized: ... check mqtt.username",
"the broker closed the connection during CONNECT: is port 8883 a TLS listener?"), logs it at
WARNING once per distinct cause (not once per retry) and keeps it as `problem` for the
statistics until a connection works again.

Secrets: the password comes from a file or an environment variable, never the command line.
A password file readable by group or others is warned about; a variable is removed from the
environment once read, so no child process inherits it.
"""

from __future__ import annotations

import functools
import logging
import os
import random
import socket
import stat
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_runtime.contract.errors import UserError
from edge_runtime.contract.settings import setting

log = logging.getLogger(__name__)


@dataclass
class MqttConfig:
    enabled: bool = setting(True, help="publish over MQTT; false: print detections as JSON "
                                       "lines on stdout instead")
    host: str = setting("localhost", help="broker host name or address")
    port: int = setting(0, help="broker port; 0 = 1883, or 8883 with TLS", min=0, max=65535)
    topic_prefix: str = setting("meerkit", help="topics are <prefix>/<device id>/...; no # or +")
    client_id: str = setting("", help="MQTT client id; \"\" = edge-runtime-<device id> on a "
                                      "device, a random id (and a clean session) on the server")
    username: str = setting("", help="broker user name; \"\" = anonymous")
    password_file: str = setting("", help="file holding the broker password (never the "
                                          "password itself in the config)")
    password_env: str = setting("MEERKIT_MQTT_PASSWORD", help="environment variable holding "
                                                              "the broker password")
    tls: bool = setting(False, help="connect with TLS")
    ca_file: str = setting("", help="CA certificate(s) to trust; \"\" = the system CA store")
    cert_file: str = setting("", help="client certificate for mutual TLS (with key_file)")
    key_file: str = setting("", help="client private key for mutual TLS (with cert_file)")
    keepalive_s: int = setting(30, help="MQTT keepalive; the broker drops a silent client after "
                                        "1.5 x this", min=5, max=65535, unit="s")
    reconnect_min_s: float = setting(1.0, help="first reconnect delay (doubles up to "
                                               "reconnect_max_s)", gt=0, unit="s")
    reconnect_max_s: float = setting(60.0, help="longest reconnect delay", gt=0, unit="s")
    stats_interval_s: float = setting(60.0, help="publish device stats this often", gt=0,
                                      unit="s")
    max_inflight: int = setting(20, help="detections handed to the MQTT client at once; the "
                                         "rest wait on disk", min=1, max=65535)


def broker_port(cfg: MqttConfig) -> int:
    return cfg.port or (8883 if cfg.tls else 1883)


def broker_address(cfg: MqttConfig) -> str:
    return f"{cfg.host}:{broker_port(cfg)}"


# ------------------------------------------------------------------------- the password


def read_password(cfg: MqttConfig) -> str | None:
    """The MQTT password from `password_file`, else the variable `password_env` (which is
    then removed from the environment: child processes must not inherit it)."""
    if cfg.password_file:
        path = Path(cfg.password_file)
        try:
            mode = path.stat().st_mode
            text = path.read_bytes().decode("utf-8")
        except OSError as err:
            raise UserError(f"mqtt.password_file {path}: cannot read ({err.strerror})") from None
        except UnicodeDecodeError:
            raise UserError(f"mqtt.password_file {path}: is not UTF-8 text (save the password "
                            "as UTF-8, without a byte-order mark)") from None
        if text.startswith("\ufeff"):
            raise UserError(f"mqtt.password_file {path}: starts with a byte-order mark (save the "
                            "password as UTF-8 without one)")
        if mode & (stat.S_IRGRP | stat.S_IROTH):
            log.warning("mqtt.password_file %s is readable by %s (mode %o): `chmod 600 %s`",
                        path, "group and others" if mode & stat.S_IROTH else "its group",
                        stat.S_IMODE(mode), path)
        return text.rstrip("\r\n")
    if not cfg.password_env:
        return None
    # Taken out of the environment on first read and kept on this config object (not in a
    # module global: a later run in the same process must not inherit an old password).
    taken = cfg.__dict__.setdefault("_password_from_env", {})
    if cfg.password_env in os.environ:
        taken[cfg.password_env] = os.environ.pop(cfg.password_env)
    return taken.get(cfg.password_env)


# ------------------------------------------------------------------------- the client
@functools.cache
def _client_class() -> type:
    from paho.mqtt import client as mqtt

    class Client(mqtt.Client):
        """paho's client, remembering why the last connection attempt failed: paho's retry
        loop swallows the exception and calls on_connect_fail without it."""

        last_connect_error: OSError | None = None

        def reconnect(self):
            try:
                return super().reconnect()
            except OSError as err:
                self.last_connect_error = err
                raise

    return Client


def make_client(cfg: MqttConfig, client_id: str, password: str | None, *,
                will: tuple[str, str] | None = None, clean_session: bool = True,
                manual_ack: bool = False) -> Any:
    """A configured paho client (credentials, TLS, last will, backoff), not yet connected.
    `will` is (topic, payload), published retained at QoS 1 if the connection dies."""
    import ssl  # lazily: start-up without MQTT must not pay for it

    from paho.mqtt import client as mqtt

    client = _client_class()(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                             protocol=mqtt.MQTTv311, clean_session=clean_session,
                             manual_ack=manual_ack)
    if will is not None:  # before connecting: the broker stores the will in CONNECT
        client.will_set(will[0], will[1], qos=1, retain=True)
    if cfg.username:
        client.username_pw_set(cfg.username, password)
    elif password:
        raise UserError("an MQTT password is set (file or environment) but mqtt.username "
                        "(--mqtt-username) is empty")
    if cfg.tls:
        for path, key in ((cfg.ca_file, "ca_file"), (cfg.cert_file, "cert_file"),
                          (cfg.key_file, "key_file")):
            if path and not os.path.isfile(path):
                raise UserError(f"mqtt.{key} {path}: file not found")
        try:
            client.tls_set(ca_certs=cfg.ca_file or None, certfile=cfg.cert_file or None,
                           keyfile=cfg.key_file or None, cert_reqs=ssl.CERT_REQUIRED)
        except (ssl.SSLError, OSError, ValueError) as err:
            raise UserError(f"mqtt TLS files (ca {cfg.ca_file!r}, cert {cfg.cert_file!r}, key "
                            f"{cfg.key_file!r}) cannot be loaded: {err}") from None
    elif cfg.ca_file or cfg.cert_file:
        log.warning("mqtt.ca_file/cert_file are set but mqtt.tls is false: connecting in clear")
    client.reconnect_delay_set(cfg.reconnect_min_s, cfg.reconnect_max_s)  # floats work
    return client


# ------------------------------------------------------------------------- named causes
_CHECK_CREDENTIALS = ("check mqtt.username (--mqtt-username) and the password file or "
                      "environment variable")


def connect_error_cause(cfg: MqttConfig, err: BaseException | None) -> str:
    """Why a TCP/TLS connection attempt failed, in words a person can act on."""
    address, port = broker_address(cfg), broker_port(cfg)
    import ssl  # lazily: start-up without MQTT must not pay for it

    if isinstance(err, ssl.SSLCertVerificationError):
        detail = err.verify_message or str(err)
        if "hostname" in detail.lower() or "mismatch" in detail.lower():
            return f"TLS certificate does not match host {cfg.host} ({detail})"
        trust = f"CA file {cfg.ca_file}" if cfg.ca_file else "the system CA store"
        return (f"TLS certificate not trusted by {trust} ({detail}); check mqtt.ca_file "
                "(--mqtt-ca-file)")
    if isinstance(err, ConnectionRefusedError):
        return f"connection refused: nothing listening on {address} (broker down or unreachable)"
    if isinstance(err, socket.gaierror):
        return f"unknown host {cfg.host} ({err.strerror})"
    if isinstance(err, TimeoutError):
        return f"no answer from {address} (unreachable: wrong host, firewall, broker down)"
    if cfg.tls and isinstance(err, ssl.SSLError | ConnectionResetError | BrokenPipeError):
        reason = getattr(err, "reason", None) or err.__class__.__name__
        return (f"TLS handshake with {address} failed ({reason}): is port {port} a plain MQTT "
                "listener rather than TLS?")
    if err is None:
        return f"cannot connect to {address} (unreachable)"
    return f"cannot connect to {address} ({getattr(err, 'strerror', None) or err})"


def refusal_cause(reason_code: Any) -> str:
    """A CONNACK refusal (paho ReasonCode; MQTT 3.1.1 codes arrive as their MQTT 5 names)."""
    value = getattr(reason_code, "value", None)
    hint = {
        132: "the broker does not speak MQTT 3.1.1",
        133: "client id rejected; check mqtt.client_id (--mqtt-client-id)",
        134: f"bad username or password; {_CHECK_CREDENTIALS}",
        135: f"not authorised: a wrong username or password, or the broker does not allow "
             f"this client; {_CHECK_CREDENTIALS}",
        136: "the broker is unavailable",
    }.get(value, "see the broker's log")
    return f"refused the connection: {reason_code} ({hint})"


def closed_during_connect_cause(cfg: MqttConfig) -> str:
    if cfg.tls:
        return ("the broker closed the connection during CONNECT (client id already in use, "
                "or refused by the broker; see its log)")
    return (f"the broker closed the connection during CONNECT: is port {broker_port(cfg)} a "
            "TLS listener? (then set mqtt.tls / --mqtt-tls)")


class ConnectionMonitor:
    """Owns a client's connect/disconnect callbacks: tracks whether it is connected, names
    each failure (`problem`), logs each distinct cause once at WARNING, and spreads
    reconnects with a random jitter of up to half the current backoff delay (so a fleet does
    not reconnect in lock-step after a broker restart). The owner gets `on_connected(client)`
    after every successful CONNACK and `on_lost(reason_code)` when a working connection
    drops; `consequence` is appended to the warnings ("detections are kept in the outbox")."""

    def __init__(self, cfg: MqttConfig, client: Any, stop: threading.Event, *,
                 on_connected: Callable[[Any], None],
                 on_lost: Callable[[Any], None] | None = None, consequence: str = ""):
        self.cfg, self.stop = cfg, stop
        self.address = broker_address(cfg)
        self.on_connected, self.on_lost = on_connected, on_lost
        self.consequence = consequence
        self.connected = False
        self.problem: str | None = None  # the current cause, None while connected
        self.failures = 0  # consecutive failed attempts
        self._said = ""  # the last cause logged
        self._refused = False  # this attempt ended in a CONNACK refusal (a disconnect follows)
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            self._refused = True
            self._failed(refusal_cause(reason_code))
            return
        self.connected, self.failures, self.problem, self._said = True, 0, None, ""
        self.on_connected(client)

    def _on_connect_fail(self, client, userdata) -> None:
        self._failed(connect_error_cause(self.cfg, getattr(client, "last_connect_error", None)))

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        if self.stop.is_set():
            self.connected = False
            return
        if self.connected:
            self.connected = False
            if self.on_lost is not None:
                self.on_lost(reason_code)
            self._jitter()
        elif self._refused:
            self._refused = False  # already named by _on_connect
        else:
            self._failed(closed_during_connect_cause(self.cfg))

    def _failed(self, cause: str) -> None:
        self.failures += 1
        self.problem = cause
        if cause != self._said and not self.stop.is_set():
            self._said = cause
            then = f"; {self.consequence}" if self.consequence else ""
            log.warning("MQTT broker %s: %s%s; retrying with backoff up to %g s", self.address,
                        cause, then, self.cfg.reconnect_max_s)
        self._jitter()

    def _jitter(self) -> None:
        """Runs before paho's own backoff wait."""
        delay = min(self.cfg.reconnect_max_s,
                    self.cfg.reconnect_min_s * 2 ** min(self.failures, 30))
        self.stop.wait(random.uniform(0.0, 0.5 * delay))
