"""`meerkit subscribe`: argparse for server/subscriber.py. The broker flags are edge-runtime's
(`--mqtt-host`, `--mqtt-ca-file`, ...: the same setting has the same flag everywhere), their
help and ranges come from `MqttConfig`; the old spellings (`--host`, `--tls-ca`, ...) still
work for one release, hidden from --help, with a warning."""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass, field, fields

from edge_runtime.contract.command_line import add_deprecated
from edge_runtime.contract.settings import flag_name, from_mapping, help_text
from edge_runtime.mqtt_client import MqttConfig
from server.validate import MAX_CLIP_PAYLOAD

log = logging.getLogger(__name__)

# The [mqtt] settings a subscriber uses, with the spelling `meerkit subscribe` had before.
MQTT_FLAGS: dict[str, str | None] = {
    "host": "--host", "port": "--port", "tls": "--tls", "ca_file": "--tls-ca",
    "cert_file": "--tls-cert", "key_file": "--tls-key", "username": "--username",
    "password_file": "--password-file", "password_env": None, "topic_prefix": "--topic-prefix",
    "client_id": "--client-id", "keepalive_s": None, "reconnect_min_s": None,
    "reconnect_max_s": None,
}
SERVER_NOTES = {  # what differs from the device for the same setting
    "ca_file": "; implies --mqtt-tls",
    "cert_file": "; implies --mqtt-tls",
    "client_id": "; a fixed id also makes the session persistent (the broker keeps messages "
                 "while this subscriber is down)",
}

EPILOG = """\
examples:
  meerkit subscribe --mqtt-host broker.example.org --db sqlite:///detections.sqlite --print
  meerkit subscribe --mqtt-host broker --mqtt-ca-file ca.crt --mqtt-username server \\
      --mqtt-password-file pw --group ingest --db postgresql://meerkit@db/meerkit  # run N to scale out

Subscribes to <prefix>/+/detections (QoS 1; with --group NAME the shared subscription
$share/NAME/<prefix>/+/detections, so several subscribers split the stream), validates every
payload (schemas/detection.schema.json, versions 1 and 2, plus real dates, finite numbers,
end >= start, duration), stores each event_id once and acknowledges a message only after it
is committed. It also subscribes to <prefix>/+/clips/+: a clip whose bytes match its sha256
and that its stored detection announced is kept in the table <table>_clips.
Rejected payloads (and an event_id reused with other content: "conflict") are counted and
kept in the table <table>_dead_letters with the reason, topic and first bytes. A broker that
is down or refuses the connection is retried with backoff; each distinct cause is logged once.
The password comes from --mqtt-password-file or $MEERKIT_MQTT_PASSWORD, never the command line.

exit status: 0 stopped by a signal, --timeout or --max-messages reached; 1 --timeout ended
before --max-messages detections were stored, or before the broker was ever reached; 2 usage
or database error.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "subscribe", help="store MQTT detections from edge devices in SQLite or PostgreSQL",
        description="Reference central-server subscriber: validate, de-duplicate and store "
                    "detections.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    b = p.add_argument_group("broker ([mqtt], as for edge-runtime)")
    specs = {f.name: f for f in fields(MqttConfig)}
    for name, old in MQTT_FLAGS.items():
        new, dest = flag_name("mqtt", name), f"mqtt__{name}"
        text = help_text(specs[name]) + SERVER_NOTES.get(name, "")
        if specs[name].type in (bool, "bool"):
            action = b.add_argument(new, dest=dest, action=argparse.BooleanOptionalAction,
                                    default=None, help=text)
        else:
            action = b.add_argument(new, dest=dest, default=None, metavar=name.upper(),
                                    help=text)
        if old:
            add_deprecated(b, old, action)
    b.add_argument("--group", default="", metavar="NAME",
                   help="shared subscription $share/NAME/...: subscribers in one group split "
                        "the messages (default: none, receive everything)")
    s = p.add_argument_group("storage and output")
    s.add_argument("--db", default="sqlite:///detections.sqlite", metavar="URL",
                   help="sqlite:///FILE (WAL, created 0600) or postgresql://user@host/db "
                        "(default: %(default)s)")
    s.add_argument("--table", default="detections",
                   help="table for detections; rejected payloads go to TABLE_dead_letters "
                        "(default: %(default)s)")
    s.add_argument("--print", nargs="?", const="text", default="", choices=("text", "json"),
                   dest="print_format",
                   help="print each stored detection as one line on stdout (text, or json)")
    s.add_argument("--max-messages", type=int, default=0, metavar="N",
                   help="exit after N new detections are stored (default: never)")
    s.add_argument("--timeout", type=float, default=0.0, metavar="S",
                   help="exit after S seconds (default: never)")
    s.add_argument("--max-clip-kb", type=float, default=MAX_CLIP_PAYLOAD / 1024, metavar="KB",
                   help="reject clip messages larger than this (default: %(default)g)")
    s.add_argument("--stats-interval", type=float, default=60.0, metavar="S",
                   help="log counts every S seconds (default: %(default)s)")
    p.set_defaults(func=subscribe_handler)


def mqtt_settings(args: argparse.Namespace) -> MqttConfig:
    """The broker flags given, converted and range-checked as edge-runtime's are."""
    given = {name: value for name in MQTT_FLAGS
             if (value := getattr(args, f"mqtt__{name}", None)) is not None}
    return from_mapping(_Sections, {"mqtt": given}, "", flags=True).mqtt


@dataclass
class _Sections:  # so that messages name the flag: "--mqtt-port 70000 is out of range"
    mqtt: MqttConfig = field(default_factory=MqttConfig)


def subscribe_handler(args: argparse.Namespace) -> int:
    from server.subscriber import SubscriberConfig, subscribe

    cfg = SubscriberConfig(mqtt=mqtt_settings(args), group=args.group, db=args.db,
                           table=args.table, max_messages=args.max_messages,
                           timeout_s=args.timeout, print_format=args.print_format,
                           stats_interval_s=args.stats_interval,
                           max_clip_bytes=int(args.max_clip_kb * 1024))
    code, _ = subscribe(cfg)
    return code
