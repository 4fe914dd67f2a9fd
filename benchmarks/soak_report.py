"""benchmarks/soak.py's results: the accounting (JSON), the printed table and the PNG of the
outbox depth and RSS over the run."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from benchmarks.soak_plan import match_events
from benchmarks.soak_watch import RSS_FLAT_MB, outbox_acknowledged, outbox_depth, rss_summary

if TYPE_CHECKING:
    from benchmarks.soak import Soak


def _runtime_disconnects(log: Path) -> int:
    """Connections the runtime saw drop, from its log (0 if the wording changes)."""
    text = log.read_text(errors="replace") if log.exists() else ""
    return sum("lost connection" in line for line in text.splitlines())


def summarize(soak: Soak, warmup_s: float) -> dict[str, Any]:
    s, tally = soak.schedule, soak.tally
    received = tally.messages()
    match = match_events(soak.expected, received, soak.origin)
    acked, left = outbox_acknowledged(soak.outbox), outbox_depth(soak.outbox) or 0
    events = {
        "expected": len(soak.expected),
        "stored_by_runtime": acked + left,
        "published": acked,  # acknowledged by the broker (PUBACK), per the outbox
        "left_in_outbox": left,
        "delivered": tally.delivered,  # every copy the subscriber got
        "received_distinct": tally.distinct,
        "redelivered": tally.delivered - tally.distinct,  # QoS 1 at-least-once resends
        "lost": len(match.lost),
        "duplicates_after_dedup": len(match.extra),
        "conflicts": len(tally.conflicts),
        "unexpected": len(match.unexpected),
        "lost_examples": [f"{e.label}@{e.start_s:.2f}s" for e in match.lost[:10]],
        "unexpected_examples": [m["event_id"] for m in match.unexpected[:10]],
    }
    rss = []
    for p in soak.processes:
        own = [(audio - p["from_audio_s"], mb) for _, audio, n, mb in soak.sampler.rss
               if n == p["process"]]
        rss.append({"process": p["process"], "exit": p.get("exit"),
                    "from_audio_s": p["from_audio_s"],
                    "disconnects_in_log": _runtime_disconnects(Path(p["log"])),
                    **rss_summary(own, warmup_s)})
    depths = [d for _, _, d in soak.sampler.depth]
    verdicts = {"lost == 0": [events["lost"] == 0],
                "duplicates after de-dup == 0": [events["duplicates_after_dedup"] == 0],
                "conflicts == 0": [events["conflicts"] == 0],
                "unexpected == 0": [events["unexpected"] == 0],
                "outbox empty at the end": [left == 0],
                f"RSS flat within {RSS_FLAT_MB:g} MB": [r["flat"] for r in rss
                                                         if r["flat"] is not None] or None}
    return {
        "settings": {"audio_minutes": s.duration_s / 60, "speed": soak.speed,
                     "outages": [list(o) for o in s.outages], "kill_audio_s": s.kill_s,
                     "calls": len(soak.bursts), "clock": "audio seconds"},
        "wall_s": round(soak.wall_s, 1), "feed_wall_s": round(soak.feed_wall_s, 1),
        "events": events, "kill": soak.kill, "rss": rss,
        "outbox_depth": {"max": max(depths, default=0),
                         "samples": [[audio, d] for _, audio, d in soak.sampler.depth]},
        "rss_samples": [[audio, n, mb] for _, audio, n, mb in soak.sampler.rss],
        "verdicts": {k: "not measured" if v is None else "met" if all(v) else "MISSED"
                     for k, v in verdicts.items()},
    }


def plot(soak: Soak, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(11, 6),
                                      gridspec_kw={"height_ratios": [3, 2]})
    minutes = [audio / 60 for _, audio, _ in soak.sampler.depth]
    top.step(minutes, [d for _, _, d in soak.sampler.depth], where="post", lw=0.8,
             label="outbox depth (detections waiting)")
    for i, (down, up) in enumerate(soak.schedule.outages):
        for ax in (top, bottom):
            ax.axvspan(down / 60, up / 60, color="tab:red", alpha=0.15, lw=0,
                       label="broker down" if i == 0 and ax is top else None)
    for ax in (top, bottom):
        ax.axvline(soak.schedule.kill_s / 60, color="black", ls="--", lw=1,
                   label="SIGKILL + restart" if ax is top else None)
    top.set_ylabel("outbox depth")
    top.set_ylim(0, 1.3 * max((d for _, _, d in soak.sampler.depth), default=1) + 1)
    top.legend(loc="upper left", ncol=3, fontsize=8)  # above the peaks
    for p in soak.processes:
        pts = [(audio / 60, mb) for _, audio, n, mb in soak.sampler.rss if n == p["process"]]
        if pts:
            bottom.plot(*zip(*pts, strict=True), lw=1, label=f"edge-runtime {p['process']}")
    bottom.set_ylabel("VmRSS (MB)")
    bottom.set_xlabel(f"audio time (min), fed at {soak.speed:g}x real time")
    bottom.legend(loc="lower right", fontsize=8)
    e = match_events(soak.expected, soak.tally.messages(), soak.origin)
    fig.suptitle(f"soak: {soak.schedule.duration_s / 60:g} min of audio, "
                 f"{len(soak.schedule.outages)} broker outages, one SIGKILL: "
                 f"{len(soak.expected)} events expected, {len(e.lost)} lost", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def print_table(report: dict[str, Any]) -> None:
    s, e, k = report["settings"], report["events"], report["kill"]
    print(f"soak: {s['audio_minutes']:g} min of audio at {s['speed']:g}x in "
          f"{report['wall_s'] / 60:.1f} min wall; broker down {len(s['outages'])} times; "
          f"SIGKILL at {s['kill_audio_s']} s of audio with {k.get('outbox_depth_at_kill')} "
          f"detection(s) in the outbox")
    rows = [("events expected (from the audio)", e["expected"], ""),
            ("stored by the runtime (outbox)", e["stored_by_runtime"], ""),
            ("published (acknowledged by the broker)", e["published"], ""),
            ("left in the outbox at the end", e["left_in_outbox"], "0"),
            ("delivered to the subscriber (all copies)", e["delivered"], ""),
            ("received, distinct event_id", e["received_distinct"], ""),
            ("redelivered copies (QoS 1)", e["redelivered"], ""),
            ("lost", e["lost"], "0"),
            ("duplicates after de-dup by event_id", e["duplicates_after_dedup"], "0"),
            ("conflicts (same id, other content)", e["conflicts"], "0"),
            ("unexpected events", e["unexpected"], "0"),
            ("outbox depth, max", report["outbox_depth"]["max"], "")]
    width = max(len(r[0]) for r in rows)
    print(f"\n{'':{width}}  {'value':>8}  target")
    for what, value, target in rows:
        print(f"{what:{width}}  {value!s:>8}  {target}")
    print(f"\n{'RSS (MB)':{width}}  {'start':>8}  {'end':>7}  {'max':>7}  {'slope/h':>7}  flat")
    for r in report["rss"]:
        if r["flat"] is not None:
            print(f"{'edge-runtime ' + str(r['process']) + ' (exit ' + str(r['exit']) + ')':{width}}"
                  f"  {r['start_mb']:8.1f}  {r['end_mb']:7.1f}  {r['max_mb']:7.1f}  "
                  f"{r['slope_mb_per_audio_h']!s:>7}  {r['flat']}")
    print()
    for what, verdict in report["verdicts"].items():
        print(f"{what}: {verdict}")
