"""edge_runtime.config: TOML + flags, typos are errors with suggestions, device profiles load."""

import re
from pathlib import Path

import numpy as np
import pytest

from edge_runtime.cli import build_parser, main
from edge_runtime.config import describe, flag_overrides, load_config, read_password
from edge_runtime.contract.errors import UserError
from edge_runtime.contract.wav import write_wav
from tests.conftest import free_port

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
    ('[model]\nthreads = "two"\n', r"c\.toml:2: model.threads must be a number, not the string"),
    ('[model]\nthreads = 1.5\n', r"c\.toml:2: model.threads must be an integer"),
    ('[model]\nthreads = 0\n', r"c\.toml:2: model.threads = 0 is out of range \(1\.\.64\)"),
    ('[mqtt]\ntls = "yes"\n', r"c\.toml:2: mqtt.tls must be true or false"),
    ('[stdin]\nformat = "s24le"\n',
     r"c\.toml:2: stdin.format = 's24le' is not one of s16le, s32le, f32le"),
    ('[audio]\nchannel = "left"\n', "audio.channel must be 'mix' or a channel index"),
    ('[model.thresholds]\nloud = 1.5\n',
     r"c\.toml:2: model.thresholds.loud = 1.5 is out of range \(0\.\.1\)"),
    ('[model]\nthresholds = {loud = -1}\n', r"c\.toml:2: model.thresholds.loud = -1.0 is out"),
    ('[mqtt]\nhost = "b"\n\nkeepalive_s = 70000\n',
     r"c\.toml:4: mqtt.keepalive_s = 70000 is out of range \(5\.\.65535\)"),
    ('[mqtt]\nport = 65536\n', r"c\.toml:2: mqtt.port = 65536 is out of range \(0\.\.65535\)"),
    ('[mqtt]\nhost = ""\n', "mqtt.host is empty"),
    ('[log]\nlevel = "verbose"\n', r"log.level = 'verbose' is not one of debug, info"),
    ('[outbox]\nmax_mb = 0\n', r"outbox.max_mb = 0.0 is out of range \(> 0\)"),
    ('[clips]\npre_s = -1\n', r"clips.pre_s = -1.0 is out of range \(>= 0\)"),
    ('[audio]\nblock_s = 10\n', r"audio.block_s = 10.0 is out of range \(0\.005\.\.5\)"),
    ('[device]\nlat = 91.0\nlon = 0.0\n', r"device.lat = 91.0 is out of range \(-90\.\.90\)"),
    ('[mqtt]\nreconnect_min_s = 9\nreconnect_max_s = 3\n', "reconnect_min_s <= mqtt.recon"),
    ('mqtt = 5\n', r"c\.toml:1: mqtt must be a table/object of settings, got 5"),
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
    for directive in ("Restart=always", "RestartSec=", "StartLimitIntervalSec=", "DynamicUser=yes",
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


@pytest.mark.parametrize("flags, toml, message", [
    (["--mqtt-host", ""], '[mqtt]\nhost = ""\n', "mqtt.host is empty"),
    (["--model-threads", "100000"], "[model]\nthreads = 100000\n",
     r"(--model-threads 100000|model\.threads = 100000) is out of range \(1\.\.64\)"),
    (["--threads", "-1"], "[model]\nthreads = -1\n",
     r"(--model-threads -1|model\.threads = -1) is out of range \(1\.\.64\)"),
    (["--mqtt-keepalive-s", "70000"], "[mqtt]\nkeepalive_s = 70000\n",
     r"(--mqtt-keepalive-s 70000|mqtt\.keepalive_s = 70000) is out of range \(5\.\.65535\)"),
])
def test_absurd_values_are_one_line_errors(tmp_path, capsys, monkeypatch, flags, toml, message):
    monkeypatch.chdir(tmp_path)
    config = tmp_path / "c.toml"
    config.write_text(toml)
    for argv in ([*flags, "--check"], ["--config", str(config), "--check"]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert re.search(message, err), err
        assert err.count("\n") == 1 and "Traceback" not in err
    assert "c.toml" in err and ("c.toml:2: " in err or "range" not in message)  # its line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.toml"]  # nothing created


def test_unset_variable_in_a_path_is_an_error_and_creates_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", "/run/credentials/edge-runtime.service")
    with pytest.raises(UserError, match=r"raspberry-pi-4\.toml: outbox\.path = "
                                        r"'\$\{STATE_DIRECTORY\}/outbox\.sqlite': environment "
                                        r"variable \$STATE_DIRECTORY is not set"):
        load_config(PROFILES[PROFILES.index(PROFILES[0].with_name("raspberry-pi-4.toml"))])
    for path in ("$MEERKIT_NO_SUCH_VAR/outbox.sqlite", "${MEERKIT_NO_SUCH_VAR}/outbox.sqlite"):
        assert main(["--check", "--model", "m.tflite", "--outbox-path", path]) == 2
        err = capsys.readouterr().err
        assert "outbox.path" in err and "$MEERKIT_NO_SUCH_VAR is not set" in err, err
        assert "Traceback" not in err
    assert list(tmp_path.iterdir()) == []  # no directory named after the variable
    monkeypatch.setenv("MEERKIT_NO_SUCH_VAR", str(tmp_path / "state"))
    cfg = parse(["--outbox-path", "${MEERKIT_NO_SUCH_VAR}/outbox.sqlite"])
    assert cfg.outbox.path == str(tmp_path / "state" / "outbox.sqlite")


def test_password_file_that_is_not_utf8_is_a_one_line_error(tmp_path, capsys, energy_model):
    pw = tmp_path / "pw"
    pw.write_bytes(b"\xff\xfehunter2\n")
    with pytest.raises(UserError, match=r"mqtt.password_file .*pw: is not UTF-8 text"):
        read_password(parse(["--mqtt-password-file", str(pw)]).mqtt)
    wav = tmp_path / "a.wav"
    write_wav(wav, np.zeros(16000, np.float32), 16000)
    flags = ["--model", str(energy_model), "--input", str(wav), "--mqtt-port", str(free_port()),
             "--outbox-path", str(tmp_path / "outbox.sqlite"), "--mqtt-password-file", str(pw)]
    assert main(flags) == 2  # a run
    err = capsys.readouterr().err
    assert "mqtt.password_file" in err and "is not UTF-8 text" in err and "Traceback" not in err
    assert main([*flags, "--check"]) == 1  # --check reports it among the other checks
    out, err = capsys.readouterr()
    assert "[FAIL] broker: mqtt.password_file" in out and "is not UTF-8 text" in out
    assert "Traceback" not in out + err


def test_every_flag_has_help_with_default_and_range():
    helps = {a.dest: a.help for a in build_parser()._actions if "__" in a.dest}
    assert len(helps) > 50
    for dest, text in helps.items():
        assert text and text.split(" (")[0].strip(), f"{dest} has no help"
        assert "default" in text, dest
    assert helps["mqtt__keepalive_s"].endswith("(default 30 s; 5..65535)")
    assert "one of debug, info, warning, error" in helps["log__level"]
    assert "(default unset; 0..1)" in helps["model__hysteresis"]
    assert build_parser().format_help()  # every help string formats (no stray %)


def test_schedule_and_labels_sections(tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text('[device]\nlat = 52.52\nlon = 13.40\n[schedule]\ntimezone = "Europe/Berlin"\n'
                    'windows = ["21:00-05:00", "sunrise-30m..sunrise+2h"]\n'
                    '[labels]\ndeny = ["engine"]\n')
    cfg = load_config(toml)
    assert cfg.schedule.windows == ("21:00-05:00", "sunrise-30m..sunrise+2h")
    assert cfg.labels.deny == ("engine",) and cfg.labels.allow == ()
    again = tmp_path / "again.toml"
    again.write_text(describe(cfg))
    assert load_config(again).schedule == cfg.schedule and load_config(again).labels == cfg.labels
    flags = parse(["--schedule-windows", "01:00-02:00,03:00-04:00", "--schedule-timezone", "UTC",
                   "--labels-allow", "owl,frog"])
    assert flags.schedule.windows == ("01:00-02:00", "03:00-04:00")
    assert flags.labels.allow == ("owl", "frog")


@pytest.mark.parametrize("text, message", [
    ('[schedule]\ntimezone = "UTC"\nwindows = ["25:00-05:00"]\n',
     r"c\.toml: schedule\.windows\[0\] '25:00-05:00': 25:00 is not a time of day"),
    ('[schedule]\nwindows = ["21:00-05:00"]\n', r"c\.toml: schedule\.timezone: required"),
    ('[schedule]\ntimezone = "UTC"\nwindows = ["sunset..sunrise"]\n',
     r"sun windows need the site's lat and lon \(set device\.lat and device\.lon\)"),
    ('[schedule]\ntimezone = "Mars/Olympus"\n', r"not an IANA time zone"),
    ('[schedule]\npolar = "never"\n', r"c\.toml:2: schedule\.polar = 'never' is not one of"),
    ('[labels]\nallow = "owl"\n', r"c\.toml:2: labels\.allow must be a list"),
])
def test_bad_schedules_are_one_line_errors_at_load(tmp_path, text, message):
    toml = tmp_path / "c.toml"
    toml.write_text(text)
    with pytest.raises(UserError, match=message):
        load_config(toml)
