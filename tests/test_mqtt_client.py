"""edge_runtime/mqtt_client.py, the MQTT client factory the device and the server share: the
password (file or environment, never argv, never inherited), and connection problems named
against the real TLS + password mosquitto (conftest), once per cause, in the device's stats."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time

import pytest

from edge_runtime.contract.errors import UserError
from edge_runtime.mqtt_client import MqttConfig, read_password
from edge_runtime.outbox import Outbox
from edge_runtime.publish import MqttPublisher, check_broker

PASSWORD = "s3cr3t-Pa55word!"  # the TLS broker's password for "recorder" (conftest)


def test_password_file_readable_by_others_is_warned_about(tmp_path, caplog):
    pw = tmp_path / "pw"
    pw.write_text("hunter2\n")
    pw.chmod(0o600)
    with caplog.at_level(logging.WARNING):
        assert read_password(MqttConfig(password_file=str(pw))) == "hunter2"
    assert not caplog.records
    pw.chmod(0o644)
    with caplog.at_level(logging.WARNING):
        assert read_password(MqttConfig(password_file=str(pw))) == "hunter2"
    (warning,) = caplog.messages
    assert str(pw) in warning and "group and others" in warning and "chmod 600" in warning
    assert "hunter2" not in caplog.text


@pytest.mark.parametrize("content", [b"\xff\xfepass", "pässword".encode("latin-1"),
                                     b"\xef\xbb\xbfpassword"])
def test_a_password_file_that_is_not_utf8_is_one_line_naming_the_file(tmp_path, content):
    pw = tmp_path / "pw"
    pw.write_bytes(content)
    with pytest.raises(UserError) as err:
        read_password(MqttConfig(password_file=str(pw)))
    assert str(pw) in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(UserError, match="cannot read"):
        read_password(MqttConfig(password_file=str(tmp_path / "missing")))


def test_a_password_from_the_environment_is_not_inherited_by_children(monkeypatch):
    monkeypatch.setenv("MY_MQTT_PW", "from-env-123")
    cfg = MqttConfig(password_env="MY_MQTT_PW")
    assert read_password(cfg) == "from-env-123"
    assert "MY_MQTT_PW" not in os.environ
    child = subprocess.run([sys.executable, "-c", "import os; print(os.environ.get('MY_MQTT_PW'))"],
                           capture_output=True, text=True, check=True)
    assert child.stdout.strip() == "None"
    assert read_password(cfg) == "from-env-123"  # read again in this process: the same
    assert read_password(MqttConfig(password_env="NOT_SET_ANYWHERE")) is None


def test_no_command_line_takes_a_password():
    import argparse

    from edge_runtime.cli import build_parser
    from server.cli import register

    meerkit = argparse.ArgumentParser(prog="meerkit")
    register(meerkit.add_subparsers())
    subscribe = next(a for a in meerkit._actions if isinstance(a, argparse._SubParsersAction))
    for parser in (build_parser(), subscribe.choices["subscribe"]):
        flags = set(parser._option_string_actions)
        assert "--mqtt-password-file" in flags and "--mqtt-password-env" in flags
        assert [f for f in flags if "password" in f] == [
            f for f in flags if f.endswith(("password-file", "password-env"))]


def publisher(broker, tmp_path, password: str | None, **changes) -> MqttPublisher:
    settings = {"host": "localhost", "port": broker.port, "tls": True,
                "ca_file": str(broker.certs["ca"]), "username": "recorder",
                "reconnect_min_s": 0.1, "reconnect_max_s": 0.2}
    cfg = MqttConfig(**{**settings, **changes})
    return MqttPublisher(cfg, "rec-test", Outbox(tmp_path / f"o-{time.monotonic_ns()}.sqlite"),
                         password)


def wait_for(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not predicate():
        time.sleep(0.02)
    return predicate()


@pytest.mark.parametrize("case, cause", [
    ("wrong password", "refused the connection: Not authorized"),
    ("system CAs", "TLS certificate not trusted by the system CA store"),
    ("wrong CA", "TLS certificate not trusted by CA file"),
    ("plain to TLS", "the broker closed the connection during CONNECT: is port {port} a TLS "
                     "listener?"),
])
def test_connection_problems_are_named_once_and_shown_in_stats(tls_broker, tmp_path, caplog,
                                                               case, cause):
    changes: dict = {}
    if case == "system CAs":
        changes = {"ca_file": ""}
    elif case == "wrong CA":
        from conftest import make_certs

        changes = {"ca_file": str(make_certs(tmp_path / "other")["ca"])}
    elif case == "plain to TLS":
        changes = {"tls": False, "ca_file": "", "host": "127.0.0.1"}
    pub = publisher(tls_broker, tmp_path, "wrong" if case == "wrong password" else PASSWORD,
                    **changes)
    cause = cause.format(port=tls_broker.port)
    with caplog.at_level(logging.WARNING):
        pub.start()
        try:
            assert wait_for(lambda: pub.connection.failures >= 3), pub.stats()
            stats = pub.stats()
        finally:
            pub.close(0.2)
    assert cause in (stats["connection_problem"] or "") and stats["connected"] is False
    named = [m for m in caplog.messages if cause in m]
    assert len(named) == 1, caplog.messages  # retried, said once
    assert "detections are kept in the outbox" in named[0] and PASSWORD not in caplog.text


def test_a_working_connection_has_no_problem_and_check_names_causes(tls_broker, tmp_path):
    pub = publisher(tls_broker, tmp_path, PASSWORD)
    pub.start()
    try:
        assert wait_for(lambda: pub.stats()["connected"]), pub.stats()
        assert pub.stats()["connection_problem"] is None
    finally:
        pub.close(1.0)
    plain = MqttConfig(host="127.0.0.1", port=tls_broker.port, username="recorder")
    ok, text = check_broker(plain, "rec-test", PASSWORD, timeout_s=3)
    assert not ok and "closed the connection during CONNECT" in text
