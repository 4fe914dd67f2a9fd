"""`meerkit analyze` (batch detection over recorder SD cards) and `meerkit subscribe` (the
reference central-server subscriber). The work lives in edge_runtime/analyze.py and
server/subscriber.py (numpy + interpreter / paho only); this module is argparse."""

from __future__ import annotations

import argparse
import sys

_ANALYZE_EPILOG = """\
examples:
  meerkit analyze /media/SDCARD --model student_int8.tflite --out results
  meerkit analyze card1/ card2/ --recursive --model m.tflite --out results --workers 4

Writes one Raven selection table per audio file (<name>.Table.1.selections.txt, mirroring the
input folders), events.csv (+ events.parquet with pyarrow) and manifest.jsonl. Rerunning skips
files already analysed with the same model and settings (unless --force) and retries failed
ones. AudioMoth names (20250601_053000.WAV, UTC) fill the start_utc column.

exit status: 0 every file analysed (a truncated WAV is analysed up to its end and reported as
a warning), 1 some files failed (listed at the end; the rest are done), 2 usage error.
"""

_SUBSCRIBE_EPILOG = """\
examples:
  meerkit subscribe --host broker.example.org --db sqlite:///detections.sqlite --print
  meerkit subscribe --host broker --tls-ca ca.crt --username server --password-file pw \\
      --group ingest --db postgresql://meerkit@db/meerkit       # run N of these to scale out

Subscribes to <prefix>/+/detections (QoS 1; with --group NAME the shared subscription
$share/NAME/<prefix>/+/detections, so several subscribers split the stream), validates every
payload against schemas/detection.schema.json, stores each event_id once and acknowledges a
message only after its row is committed. Counts are logged periodically and on exit.
The password comes from --password-file or $MEERKIT_MQTT_PASSWORD, never the command line.

exit status: 0 stopped by a signal, --timeout or --max-messages reached; 1 --timeout ended
before --max-messages detections were stored; 2 usage, connection or database error.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    _register_analyze(subparsers)
    _register_subscribe(subparsers)


def _register_analyze(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "analyze", help="detect events in folders of recordings (WAV/FLAC) with a .tflite model",
        description="Batch detection over recorder SD cards: resumable, parallel over files.",
        epilog=_ANALYZE_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("paths", nargs="+", metavar="PATH", help="audio files or folders")
    p.add_argument("--model", required=True, metavar="ARTIFACT",
                   help=".tflite with a model card (e.g. from `meerkit export quantize`)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (resumable)")
    p.add_argument("--workers", type=int, default=0, metavar="N",
                   help="processes, one interpreter thread each (default: one per CPU core; "
                        "use 1 on a recorder that is also listening)")
    p.add_argument("--threshold", type=float, metavar="X",
                   help="detection threshold for every label (default: the card's per label)")
    p.add_argument("--hysteresis", type=float, metavar="X",
                   help="an event stays on while p >= threshold - X (default: the card's per "
                        "label, 0.1 on older cards)")
    p.add_argument("--min-duration", type=float, metavar="S",
                   help="drop events shorter than S seconds (default: the card's per label, 0 "
                        "on older cards)")
    p.add_argument("--merge-gap", type=float, metavar="S",
                   help="merge same-label events at most S seconds apart (default: the card's "
                        "per label, 0 on older cards)")
    p.add_argument("--emit-undetectable", action="store_true",
                   help="also report the labels the model card marks undetectable (not "
                        "reported by default)")
    p.add_argument("--channel", default="mix", metavar="mix|N",
                   help="mix all channels, or keep channel N (0-based) (default: %(default)s)")
    p.add_argument("--recursive", "-r", action="store_true", help="search subfolders too")
    p.add_argument("--force", action="store_true",
                   help="analyse every file again, even those the manifest says are done")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p.set_defaults(func=analyze_handler)


def analyze_handler(args: argparse.Namespace) -> int:
    from edge_runtime.analyze import AnalyzeConfig, analyze, format_summary

    cfg = AnalyzeConfig(model=args.model, out=args.out, workers=args.workers,
                        threshold=args.threshold, hysteresis=args.hysteresis,
                        min_duration_s=args.min_duration, merge_gap_s=args.merge_gap,
                        emit_undetectable=args.emit_undetectable,
                        channel=args.channel, recursive=args.recursive, force=args.force,
                        progress=not args.no_progress)
    summary = analyze(args.paths, cfg)
    print(format_summary(summary), file=sys.stdout if summary.ok else sys.stderr)
    return 0 if summary.ok else 1


def _register_subscribe(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "subscribe", help="store MQTT detections from edge devices in SQLite or PostgreSQL",
        description="Reference central-server subscriber: validate, de-duplicate and store "
                    "detections.",
        epilog=_SUBSCRIBE_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    b = p.add_argument_group("broker")
    b.add_argument("--host", default="localhost", help="MQTT broker (default: %(default)s)")
    b.add_argument("--port", type=int, default=0, help="default 1883, or 8883 with TLS")
    b.add_argument("--tls", action="store_true", help="TLS with the system CA store")
    b.add_argument("--tls-ca", default="", metavar="FILE", help="CA certificate (implies --tls)")
    b.add_argument("--tls-cert", default="", metavar="FILE", help="client certificate (mutual TLS)")
    b.add_argument("--tls-key", default="", metavar="FILE", help="client key (mutual TLS)")
    b.add_argument("--username", default="")
    b.add_argument("--password-file", default="", metavar="FILE",
                   help="file holding the password (else $MEERKIT_MQTT_PASSWORD)")
    b.add_argument("--topic-prefix", default="meerkit", help="(default: %(default)s)")
    b.add_argument("--group", default="", metavar="NAME",
                   help="shared subscription $share/NAME/...: subscribers in one group split "
                        "the messages")
    b.add_argument("--client-id", default="", metavar="ID",
                   help="fixed client id and a persistent session (the broker keeps messages "
                        "while this subscriber is down); default: random id, clean session")
    s = p.add_argument_group("storage and output")
    s.add_argument("--db", default="sqlite:///detections.sqlite", metavar="URL",
                   help="sqlite:///FILE (WAL) or postgresql://user@host/db (default: %(default)s)")
    s.add_argument("--table", default="detections", help="(default: %(default)s)")
    s.add_argument("--print", nargs="?", const="text", default="", choices=("text", "json"),
                   dest="print_format",
                   help="print each stored detection as one line on stdout (text, or json)")
    s.add_argument("--max-messages", type=int, default=0, metavar="N",
                   help="exit after N new detections are stored")
    s.add_argument("--timeout", type=float, default=0.0, metavar="S", help="exit after S seconds")
    s.add_argument("--stats-interval", type=float, default=60.0, metavar="S",
                   help="log counts every S seconds (default: %(default)s)")
    p.set_defaults(func=subscribe_handler)


def subscribe_handler(args: argparse.Namespace) -> int:
    from server.subscriber import SubscriberConfig, subscribe

    cfg = SubscriberConfig(host=args.host, port=args.port, tls=args.tls, ca_file=args.tls_ca,
                           cert_file=args.tls_cert, key_file=args.tls_key,
                           username=args.username, password_file=args.password_file,
                           topic_prefix=args.topic_prefix, group=args.group,
                           client_id=args.client_id, db=args.db, table=args.table,
                           max_messages=args.max_messages, timeout_s=args.timeout,
                           print_format=args.print_format, stats_interval_s=args.stats_interval)
    code, _ = subscribe(cfg)
    return code
