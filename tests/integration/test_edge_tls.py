"""Device identity by TLS client certificate: Mosquitto (the TLS example of
deploy/mosquitto/mosquitto.conf) takes the certificate CN as the username, so
the same ``%u`` ACL confines the device; the agent connects with mqtts://."""

from __future__ import annotations

import datetime as dt
import ipaddress
import re
import subprocess
import threading
import uuid
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from edge_agent import Agent, load_config
from edge_agent.protocol import DeviceStatus, Topics, decode
from tests.conftest import REPO, free_port, port_answers
from tests.edge_support import Keys, wait_for

pytestmark = pytest.mark.integration

DEPLOY = REPO / "deploy" / "mosquitto"


def _cert(
    cn: str,
    issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey] | None,
    *,
    ca: bool = False,
    san: str | None = None,
):  # type: ignore[no-untyped-def]
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    issuer_name, issuer_key = issuer or (name, key)
    now = dt.datetime.now(dt.UTC)
    b = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if san:
        b = b.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(san))]),
            critical=False,
        )
    cert = b.sign(issuer_key, hashes.SHA256())
    return name, key, cert


def _write(
    path: Path, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate
) -> tuple[Path, Path]:
    k, c = path.with_suffix(".key"), path.with_suffix(".crt")
    k.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    c.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return k, c


def test_agent_authenticates_with_a_client_certificate(tmp_path: Path) -> None:
    ca_name, ca_key, ca_cert = _cert("citybrain test CA", None, ca=True)
    _write(tmp_path / "ca", ca_key, ca_cert)
    _, srv_key, srv_cert = _cert("broker", (ca_name, ca_key), san="127.0.0.1")
    _write(tmp_path / "broker", srv_key, srv_cert)
    device = f"cam-{uuid.uuid4().hex[:6]}"
    _, dev_key, dev_cert = _cert(device, (ca_name, ca_key))
    dkey, dcrt = _write(tmp_path / "device", dev_key, dev_cert)

    # the commented TLS block of the shipped config, switched on for certificates
    conf = (DEPLOY / "mosquitto.conf").read_text()
    tls = "\n".join(
        line[2:]
        for line in conf.splitlines()
        if re.match(
            r"^# (listener 8883|protocol|allow_anonymous|cafile|certfile|keyfile|tls_version|# require_certificate|# use_identity_as_username|acl_file)",
            line,
        )
    )
    tls = tls.replace("# require_certificate", "require_certificate").replace(
        "# use_identity_as_username", "use_identity_as_username"
    )
    port = free_port()
    tls = tls.replace("listener 8883", f"listener {port} 127.0.0.1")
    tls = tls.replace("/etc/mosquitto/certs/ca.crt", str(tmp_path / "ca.crt"))
    tls = tls.replace("/etc/mosquitto/certs/broker.crt", str(tmp_path / "broker.crt"))
    tls = tls.replace("/etc/mosquitto/certs/broker.key", str(tmp_path / "broker.key"))
    tls = tls.replace("/etc/mosquitto/citybrain.acl", str(DEPLOY / "acl"))
    assert "require_certificate true" in tls and "use_identity_as_username true" in tls
    (tmp_path / "m.conf").write_text(
        f"user root\nper_listener_settings true\npersistence false\n{tls}\n"
    )
    proc = subprocess.Popen(["mosquitto", "-c", str(tmp_path / "m.conf")], stderr=subprocess.PIPE)
    agent = None
    try:
        wait_for(lambda: port_answers(port) or proc.poll() is not None, 10)
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        keys = Keys(tmp_path)
        cfg = load_config(
            None,
            device_id=device,
            broker_url=f"mqtts://127.0.0.1:{port}",
            tls_ca=tmp_path / "ca.crt",
            tls_cert=dcrt,
            tls_key=dkey,
            data_dir=tmp_path / "agent",
            store_public_key=keys.path,
        )
        agent = Agent(cfg).start()
        assert agent.session.wait_connected(15)
        # its online status went through the ACL (CN == device id == %u)
        got: list[bytes] = []
        watcher = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=f"{device}-w", protocol=mqtt.MQTTv5
        )
        watcher.tls_set(ca_certs=str(tmp_path / "ca.crt"), certfile=str(dcrt), keyfile=str(dkey))
        watcher.on_message = lambda c, ud, m: got.append(m.payload)
        watcher.on_connect = lambda c, ud, fl, rc, pr: c.subscribe(Topics.status(device), qos=1)
        watcher.connect("127.0.0.1", port)
        watcher.loop_start()
        try:
            wait_for(lambda: got, 10)
            assert decode(got[-1], DeviceStatus).state == "online"
        finally:
            watcher.disconnect()
            watcher.loop_stop()
        # a client without a certificate is turned away
        ok = threading.Event()
        bare = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        bare.tls_set(ca_certs=str(tmp_path / "ca.crt"))
        bare.on_connect = lambda c, ud, fl, rc, pr: ok.set() if not rc.is_failure else None
        try:
            bare.connect("127.0.0.1", port)
            bare.loop_start()
            assert not ok.wait(3)
        except OSError:
            pass  # refused during the handshake
        finally:
            bare.loop_stop()
    finally:
        if agent is not None:
            agent.stop()
        proc.terminate()
        proc.wait(5)
