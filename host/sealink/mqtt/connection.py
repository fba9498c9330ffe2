"""Every MQTT connection sealink makes is set up here, from one `MqttConfig`: TLS, login,
backoff, session. The gateway's publisher (in its own process), the witness desk and the witness
service each build their paho client with `new_client`, so no path can forget TLS or the login.

TLS is 1.2 or later; the broker's certificate is verified against `ca_file` (or the system's
CAs) and its name checked against `server_name` (or `host`). There is deliberately no setting
that turns either check off. A refused login or a failed handshake is named in one line
(`connect_failure`, `refusal`): paho itself only reports "Unspecified error" or nothing.
"""

from __future__ import annotations

import re
import ssl
from typing import Any, TypeVar

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, LogLevel, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from sealink.config import MqttConfig, tls_context

__all__ = ["Client", "connect_failure", "connect_properties", "new_client", "refusal"]

# MQTT 5 CONNACK reasons that mean the credentials (§3.2.2.2): 0x86, 0x87.
_LOGIN_REFUSED = (0x86, 0x87)
_SSL_CODE = re.compile(r"^\[[A-Z]+: [A-Z0-9_]+\] ")
_SSL_WHERE = re.compile(r" \(_ssl\.c:\d+\)$")


class Client(mqtt.Client):
    """paho's client, remembering why its last connection attempt failed or its socket broke
    (`failure`, readable, "" when nothing went wrong since the last attempt)."""

    failure: str = ""
    has_certificate = False

    def reconnect(self) -> MQTTErrorCode:
        self.failure = ""
        try:
            return super().reconnect()
        except (OSError, ValueError) as exc:
            self.failure = connect_failure(exc, self.has_certificate)
            raise

    def _easy_log(self, level: LogLevel, fmt: str, *args: Any) -> None:
        # A TLS 1.3 broker that refuses the client's certificate says so after the handshake,
        # on the first read: paho logs that error and reports only a lost connection.
        if level == mqtt.MQTT_LOG_ERR and args and isinstance(args[-1], OSError):
            self.failure = connect_failure(args[-1], self.has_certificate)
        super()._easy_log(level, fmt, *args)


C = TypeVar("C", bound=Client)


def _ssl_text(exc: BaseException) -> str:
    text = str(exc.args[1]) if isinstance(exc, ssl.SSLError) and len(exc.args) > 1 else str(exc)
    return _SSL_WHERE.sub("", _SSL_CODE.sub("", text))


def new_client(config: MqttConfig, client_id: str, cls: type[C]) -> C:
    """A paho MQTT 5 client with the configured TLS, login and reconnect backoff (paho's unit:
    whole seconds, at least 1)."""
    client = cls(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    client.reconnect_delay_set(
        max(1, round(config.reconnect_min_s)), max(1, round(config.reconnect_max_s))
    )
    if config.tls:
        client.tls_set_context(tls_context(config))
        client.has_certificate = config.cert_file is not None
    if config.username:
        client.username_pw_set(config.username, config.password)
    return client


def connect_properties(config: MqttConfig) -> Properties:
    """CONNECT properties of a connection that resumes its session (clean start off)."""
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    props.SessionExpiryInterval = config.session_expiry_s
    return props


def connect_failure(exc: BaseException, has_certificate: bool = True) -> str:
    """Why a connection could not be made, in words: "TLS: certificate verify failed: …"."""
    if isinstance(exc, ssl.SSLEOFError) and not has_certificate:
        # Mosquitto closes the connection without an alert when a certificate it requires
        # is missing; OpenSSL then sees only the end of the stream.
        return (
            "TLS: the broker closed the connection in the handshake; it may require a client "
            "certificate (mqtt.cert_file and mqtt.key_file are not set)"
        )
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS: certificate verify failed: {exc.verify_message or _ssl_text(exc)}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS: {_ssl_text(exc)}"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def refusal(reason: Any) -> str:
    """A CONNACK that refused the connection, in words."""
    text = str(reason).lower()
    if getattr(reason, "value", None) in _LOGIN_REFUSED:
        return f"broker refused the login: {text}"
    return f"broker refused the connection: {text}"
