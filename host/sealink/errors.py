"""Every error sealink raises on purpose derives from SealinkError."""

from __future__ import annotations


class SealinkError(Exception):
    """Root of sealink's own errors."""


class ConfigError(SealinkError):
    """The configuration file is invalid; the message names the key and the problem."""

    def __init__(self, key: str, problem: str) -> None:
        self.key = key
        self.problem = problem
        super().__init__(f"config: {key}: {problem}" if key else f"config: {problem}")


class KeyFileError(SealinkError):
    """A key file is missing, malformed or readable by others."""


class TpmError(SealinkError):
    """The TPM holding a key could not be reached, or refused to load or use it."""


class TransportError(SealinkError):
    """A transport could not be opened, or failed while in use."""


class TransportUnavailableError(TransportError):
    """A transport needs something that is not installed or not yet implemented."""


class LedgerError(SealinkError):
    """The ledger could not store or read something (disk full, I/O error, bad state)."""


class BrokerError(SealinkError):
    """The MQTT broker could not be started, reached or used."""


class CommandError(SealinkError):
    """A host command to a device failed or timed out."""


class DeviceError(SealinkError):
    """A device is unknown, or its registration is invalid."""


class ObserverError(SealinkError):
    """The independent observer could not subscribe, or a wait timed out."""


class FleetError(SealinkError):
    """The fleet ledger could not reach, migrate or use its PostgreSQL database."""
