"""The TOML config: each kind of error names the key and the problem; `sealink run` exits 2."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from sealink.config import ApprovalsConfig, load_config, require_together
from sealink.crypto.keystore import LinkKeyStore
from sealink.crypto.signer import GatewayKey
from sealink.errors import ConfigError

GOOD = """
[gateway]
id = "gw-1"
key_file = "gateway.key"
ledger = "ledger.sqlite"

[mqtt]
host = "127.0.0.1"
port = 1883
prefix = "plant/seals"

[[ports]]
url = "/dev/ttyUSB0"

[[ports]]
url = "rfc2217://10.0.0.5:4001"
baudrate = 115200

[log]
level = "debug"
json = true
"""


@pytest.fixture
def conf_dir(tmp_path: Path) -> Path:
    GatewayKey.generate().save(tmp_path / "gateway.key")
    return tmp_path


def _write(conf_dir: Path, text: str) -> Path:
    path = conf_dir / "sealink.toml"
    path.write_text(text)
    return path


def test_a_good_config_loads_with_paths_relative_to_the_file(conf_dir: Path) -> None:
    config = load_config(_write(conf_dir, GOOD))
    assert config.gateway_id == "gw-1"
    assert config.key_file == conf_dir / "gateway.key"
    assert config.link_keys == conf_dir / "link-keys"  # by default, beside the gateway key
    assert config.mqtt.prefix == "plant/seals" and config.mqtt.port == 1883
    assert [p.url for p in config.ports] == ["/dev/ttyUSB0", "rfc2217://10.0.0.5:4001"]
    assert config.log.json is True and config.client_id == "sealink-gw-1"


@pytest.mark.parametrize(
    ("edit", "key", "problem"),
    [
        (("port = 1883", "port = 1883\nhots = 'x'"), "mqtt.hots", "unknown key"),
        (("[log]", "[logging]"), "logging", "unknown section"),
        (("port = 1883", 'port = "1883"'), "mqtt.port", "must be an integer"),
        (("port = 1883", "port = 70000"), "mqtt.port", "between 1 and 65535"),
        (("port = 1883", "port = true"), "mqtt.port", "boolean"),
        (('id = "gw-1"\n', ""), "gateway.id", "missing"),
        (('id = "gw-1"', 'id = "gw/1"'), "gateway.id", "A-Z a-z 0-9"),
        (('prefix = "plant/seals"', 'prefix = "plant/#"'), "mqtt.prefix", "wildcards"),
        (('url = "/dev/ttyUSB0"', 'url = "ftp://x/y"'), "ports[0].url", "unsupported URL scheme"),
        (("rfc2217://10.0.0.5:4001", "rfc2217://10.0.0.5"), "ports[1].url", "host:port"),
        (("rfc2217://10.0.0.5:4001", "rfc2217://10.0.0.5:99999"), "ports[1].url", "host:port"),
        (
            ("baudrate = 115200", "baudrate = 115200\ntransport = 'usb'"),
            "ports[1].transport",
            "unknown transport",
        ),
        (('url = "/dev/ttyUSB0"', 'url = "ble://seal/1"'), "ports[0].url", "the id is 1..32"),
        (('url = "/dev/ttyUSB0"', 'url = "ble://s1?backend=bumble"'), "ports[0].url", "needs hci"),
        (('url = "/dev/ttyUSB0"', 'url = "ble://s1?mtu=9"'), "ports[0].url", "mtu must be"),
        (('url = "/dev/ttyUSB0"', 'url = "ble://s1?pin=1"'), "ports[0].url", "unknown BLE URL"),
        (
            ('url = "/dev/ttyUSB0"', 'url = "ble://s1"\ntransport = "serial"'),
            "ports[0].transport",
            "does not match url",
        ),
        (
            ("[log]", "[approvals]\nrefusals_per_min = 0\n$&"),
            "approvals.refusals_per_min",
            "between 1 and 60000",
        ),
        (
            ("[log]", "[approvals]\nrefusals_per_approver_per_min = '9'\n$&"),
            "approvals.refusals_per_approver_per_min",
            "an integer",
        ),
        (
            ("[log]", "[approvals]\nrefusals_per_approver_per_min = 200\n$&"),
            "approvals.refusals_per_approver_per_min",
            "not be above refusals_per_min (120)",
        ),
        (
            ("[log]", "[approvals]\nrefusals_per_min = 10\n$&"),
            "approvals.refusals_per_min",
            "(30) must not be above",
        ),
        (("json = true", 'json = "yes"'), "log.json", "true or false"),
        (('level = "debug"', 'level = "loud"'), "log.level", "one of"),
        (
            ('key_file = "gateway.key"', 'key_file = "missing.key"'),
            "gateway.key_file",
            "cannot read",
        ),
        (('key_file = "gateway.key"', "$&\nlink_keys = 7"), "gateway.link_keys", "a string"),
        (('key_file = "gateway.key"', '$&\nlink_keys = ""'), "gateway.link_keys", "file path"),
        (
            ('key_file = "gateway.key"', '$&\nlink_keys = "ledger.sqlite"'),
            "gateway.link_keys",
            "a file of its own",
        ),
    ],
)
def test_each_error_names_the_key_and_the_problem(
    conf_dir: Path, edit: tuple[str, str], key: str, problem: str
) -> None:
    assert edit[0] in GOOD
    with pytest.raises(ConfigError) as err:
        load_config(_write(conf_dir, GOOD.replace(edit[0], edit[1].replace("$&", edit[0]), 1)))
    assert err.value.key == key, str(err.value)
    assert problem in str(err.value)


def test_a_ble_url_selects_the_ble_transport(conf_dir: Path) -> None:
    url = "ble://Seal_A.1?backend=bumble&hci=usb:0&mtu=23"
    config = load_config(_write(conf_dir, GOOD.replace("/dev/ttyUSB0", url)))
    assert (config.ports[0].url, config.ports[0].transport) == (url, "ble")
    assert config.ports[1].transport == "serial"


def test_a_key_file_readable_by_others_is_refused(conf_dir: Path) -> None:
    os.chmod(conf_dir / "gateway.key", 0o644)
    with pytest.raises(ConfigError) as err:
        load_config(_write(conf_dir, GOOD))
    assert err.value.key == "gateway.key_file"
    assert "chmod 600" in str(err.value)


def test_the_link_key_store_is_configurable_and_refused_when_others_may_read_it(
    conf_dir: Path,
) -> None:
    text = GOOD.replace('key_file = "gateway.key"', '$&\nlink_keys = "keys/links"', 1)
    path = _write(conf_dir, text.replace("$&", 'key_file = "gateway.key"'))
    assert load_config(path).link_keys == conf_dir / "keys" / "links"  # absent: not an error
    LinkKeyStore(conf_dir / "keys" / "links").put("seal-1", bytes(32))
    assert load_config(path).link_keys == conf_dir / "keys" / "links"
    os.chmod(conf_dir / "keys" / "links", 0o640)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert err.value.key == "gateway.link_keys"
    assert "chmod 600" in str(err.value) and bytes(32).hex() not in str(err.value)


def test_the_example_config_is_valid() -> None:
    example = Path(__file__).parents[1] / "examples" / "sealink.toml"
    config = load_config(example, check_key_file=False)
    assert config.link_keys == Path("/etc/sealink/link-keys")
    assert config.key_file == Path("/etc/sealink/gateway.key")
    assert config.approvals == ApprovalsConfig()  # it documents the defaults


def test_not_toml_and_unreadable_file(conf_dir: Path) -> None:
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(_write(conf_dir, "[gateway\nid="))
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(conf_dir / "absent.toml")


def test_sealink_run_reports_the_config_error_and_exits_2(conf_dir: Path) -> None:
    path = _write(conf_dir, GOOD.replace("port = 1883", "port = 0"))
    proc = subprocess.run(
        [sys.executable, "-m", "sealink.cli", "run", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "mqtt.port" in proc.stderr and "between 1 and 65535" in proc.stderr


MQTT_TLS = """
[gateway]
id = "gw-1"
key_file = "gateway.key"
ledger = "ledger.sqlite"

[mqtt]
host = "broker.example"
tls = true
ca_file = "ca.pem"
username = "gw-1"
password_file = "mqtt.password"
"""


def _ca(conf_dir: Path) -> None:
    """A CA certificate file that a TLS context accepts (made with cryptography)."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test CA")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    (conf_dir / "ca.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _password(conf_dir: Path, text: str = "s3cret word\n", mode: int = 0o600) -> None:
    path = conf_dir / "mqtt.password"
    path.write_text(text)
    os.chmod(path, mode)


def test_mqtt_tls_and_login_load_with_the_password_from_its_file(conf_dir: Path) -> None:
    _ca(conf_dir)
    _password(conf_dir)
    config = load_config(_write(conf_dir, MQTT_TLS))
    mqtt = config.mqtt
    assert mqtt.tls and mqtt.port == 8883  # the MQTT-over-TLS port unless one is given
    assert mqtt.ca_file == conf_dir / "ca.pem" and mqtt.username == "gw-1"
    assert mqtt.password == "s3cret word"  # the line ending is not part of it
    assert "s3cret" not in repr(config)
    assert mqtt.session_expiry_s == 86400


@pytest.mark.parametrize(
    ("edit", "key", "problem"),
    [
        (('ca_file = "ca.pem"', 'ca_file = "absent.pem"'), "mqtt.ca_file", "cannot read"),
        (
            ('password_file = "mqtt.password"', 'password_file = "x"'),
            "mqtt.password_file",
            "cannot read",
        ),
        (("tls = true", "tls = false"), "mqtt.ca_file", "needs tls = true"),
        (('username = "gw-1"\n', ""), "mqtt.username", "password_file needs a username"),
        (("tls = true", 'tls = true\ncert_file = "ca.pem"'), "mqtt.key_file", "go together"),
        (("tls = true", 'tls = "yes"'), "mqtt.tls", "true or false"),
        (("tls = true", "tls = true\ninsecure = true"), "mqtt.insecure", "unknown key"),
        (("tls = true", "tls = true\nsession_expiry_s = -1"), "mqtt.session_expiry_s", "between"),
    ],
)
def test_mqtt_tls_and_login_errors_name_the_key(
    conf_dir: Path, edit: tuple[str, str], key: str, problem: str
) -> None:
    _ca(conf_dir)
    _password(conf_dir)
    with pytest.raises(ConfigError) as err:
        load_config(_write(conf_dir, MQTT_TLS.replace(*edit)))
    assert err.value.key == key and problem in err.value.problem


@pytest.mark.parametrize(
    ("table", "key"),
    [
        ({"cert": "c.pem"}, "s.key"),
        ({"cert": "c.pem", "key": None}, "s.key"),
        ({"key": "k"}, "s.cert"),
    ],
)
def test_keys_that_go_together_name_the_one_left_out(table: dict[str, object], key: str) -> None:
    require_together({"cert": "c.pem", "key": "k.pem"}, "s", "cert", "key")
    require_together({"other": 1}, "s", "cert", "key")
    with pytest.raises(ConfigError) as err:
        require_together(table, "s", "cert", "key")
    assert (err.value.key, err.value.problem) == (key, "cert and key go together")


def test_a_password_file_others_may_read_is_refused_and_never_shown(conf_dir: Path) -> None:
    _ca(conf_dir)
    _password(conf_dir, mode=0o644)
    path = _write(conf_dir, MQTT_TLS)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert err.value.key == "mqtt.password_file" and "chmod 600" in str(err.value)
    assert "s3cret" not in str(err.value)
    # commands that do not connect load it without reading it
    assert load_config(path, check_key_file=False).mqtt.password is None
    proc = subprocess.run(
        [sys.executable, "-m", "sealink.cli", "run", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("sealink: error: config: mqtt.password_file: ")
    assert "s3cret" not in proc.stderr


def test_a_ca_file_that_is_not_a_certificate_is_refused_at_load(conf_dir: Path) -> None:
    _password(conf_dir)
    (conf_dir / "ca.pem").write_text("not a certificate\n")
    with pytest.raises(ConfigError) as err:
        load_config(_write(conf_dir, MQTT_TLS))
    assert err.value.key == "mqtt.ca_file" and "not PEM CA certificates" in err.value.problem
