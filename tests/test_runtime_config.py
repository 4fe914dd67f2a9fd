"""edge_runtime.config: TOML + flags, typos are errors with suggestions, device profiles load."""

from pathlib import Path

import pytest

from edge_runtime.cli import build_parser, main
from edge_runtime.config import describe, flag_overrides, load_config, read_password
from edge_runtime.contract.errors import UserError

PROFILES = sorted((Path(__file__).resolve().parents[1] / "firmware_configs").glob("*.toml"))


def parse(argv):
    args = build_parser().parse_args(argv)
    return load_config(args.config, flag_overrides(args))


def test_defaults_then_file_then_flags(tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text('[mqtt]\nhost = "from-file"\nport = 1884\n[model]\nthreads = 3\n'
                    '[model.thresholds]\nloud = 0.7\n')
    cfg = parse(["--config", str(toml), "--mqtt-port", "1999", "--threads", "2",
                 "--model-thresholds", "very_loud=0.4", "--no-mqtt-tls"])
    assert cfg.mqtt.host == "from-file"  # file over default
    assert cfg.mqtt.port == 1999 and cfg.model.threads == 2  # flags over file
    assert cfg.model.thresholds == {"very_loud": 0.4}  # a flag replaces the whole table
    assert cfg.mqtt.tls is False and cfg.mqtt.keepalive_s == 30


def test_unknown_key_names_line_and_suggests(tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text('[device]\nid = "x"\n\n[mqtt]\nhots = "broker"\n')
    with pytest.raises(UserError, match=r"c\.toml:5: unknown key 'hots' in \[mqtt\] "
                                        r"\(did you mean 'host'\?\)"):
        load_config(toml)


def test_unknown_section_suggests(tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text('[outbx]\npath = "x"\n')
    with pytest.raises(UserError, match=r"c\.toml:1: unknown section \[outbx\] "
                                        r"\(did you mean 'outbox'\?\)"):
        load_config(toml)


@pytest.mark.parametrize("text, message", [
    ('[model]\nthreads = "two"\n', "model.threads must be a number, not the string"),
    ('[model]\nthreads = 1.5\n', "model.threads must be an integer"),
    ('[model]\nthreads = 0\n', "model.threads must be >= 1"),
    ('[mqtt]\ntls = "yes"\n', "mqtt.tls must be true or false"),
    ('[stdin]\nformat = "s24le"\n', "stdin.format 's24le' is not one of"),
    ('[audio]\nchannel = "left"\n', "audio.channel must be 'mix' or a channel index"),
    ('[model.thresholds]\nloud = 1.5\n', "model.thresholds.loud must be in"),
    ('[mqtt\nhost = 1\n', "invalid TOML"),
    ('[device]\nlat = 10.0\n', "device.lat and device.lon go together"),
])
def test_bad_values_are_user_errors(tmp_path, text, message):
    toml = tmp_path / "c.toml"
    toml.write_text(text)
    with pytest.raises(UserError, match=message):
        load_config(toml)


def test_bad_flag_value_names_the_flag():
    with pytest.raises(UserError, match="--mqtt-port must be an integer"):
        parse(["--mqtt-port", "eighty"])


def test_main_prints_config_errors_without_traceback(tmp_path, capsys):
    toml = tmp_path / "c.toml"
    toml.write_text("[audio]\nimput = \"-\"\n")
    assert main(["--config", str(toml)]) == 2
    err = capsys.readouterr().err
    assert "unknown key 'imput'" in err and "did you mean 'input'" in err
    assert "Traceback" not in err


def test_missing_config_file(tmp_path, capsys):
    assert main(["--config", str(tmp_path / "nope.toml")]) == 2
    assert "cannot read config" in capsys.readouterr().err


@pytest.mark.parametrize("profile", PROFILES, ids=lambda p: p.name)
def test_device_profiles_are_valid(profile, monkeypatch):
    monkeypatch.setenv("STATE_DIRECTORY", "/var/lib/edge-runtime")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", "/run/credentials/edge-runtime.service")
    cfg = load_config(profile)
    assert cfg.model.path.endswith(".tflite") and cfg.model.threads >= 1
    assert cfg.outbox.path == "/var/lib/edge-runtime/outbox.sqlite"
    assert cfg.mqtt.password_file.startswith("/run/credentials/")
    assert cfg.audio.input == "mic"


def test_all_four_profiles_and_the_unit_exist():
    names = {p.name for p in PROFILES}
    assert names == {"raspberry-pi-4.toml", "raspberry-pi-5.toml", "jetson-nano.toml",
                     "jetson-orin-nano.toml"}
    unit = (PROFILES[0].parent / "systemd" / "edge-runtime.service").read_text()
    for directive in ("Restart=on-failure", "RestartSec=", "StartLimitBurst=", "DynamicUser=yes",
                      "ProtectSystem=strict", "StateDirectory=edge-runtime", "ReadWritePaths=",
                      "NoNewPrivileges=yes"):
        assert directive in unit


def test_password_comes_from_file_or_env_and_is_never_described(tmp_path, monkeypatch):
    secret = "hunter2-very-secret"
    pw = tmp_path / "pw"
    pw.write_text(secret + "\n")
    cfg = parse(["--mqtt-username", "u", "--mqtt-password-file", str(pw)])
    assert read_password(cfg.mqtt) == secret
    assert secret not in describe(cfg)
    monkeypatch.setenv("MY_PW", secret)
    cfg = parse(["--mqtt-password-env", "MY_PW"])
    assert read_password(cfg.mqtt) == secret
    with pytest.raises(UserError, match="cannot read"):
        read_password(parse(["--mqtt-password-file", str(tmp_path / "missing")]).mqtt)


def test_describe_round_trips(tmp_path):
    cfg = parse(["--input", "-", "--stdin-rate", "48000", "--model-thresholds", "a=0.25",
                 "--device-lat", "1.5", "--device-lon", "2.5"])
    toml = tmp_path / "round.toml"
    toml.write_text(describe(cfg))
    again = load_config(toml)
    assert again.audio == cfg.audio and again.stdin == cfg.stdin and again.model == cfg.model
    assert again.device == cfg.device
