"""What synth.json reports, computed from plans (no audio): per-split counts and sparsity, the
label-budget subsets, and how strongly each cue shows."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

import numpy as np

from edge_runtime.contract.events import Event, events_to_frames
from train.data.synth.config import (
    ANNOTATED_SPLITS,
    LABELS,
    STATS_FRAME_RATE_HZ,
    SUBSET_KEY,
    SUBSET_MIN_EVENTS,
    SUBSET_PERCENTS,
    SynthConfig,
    subset_name,
    subset_size,
)
from train.data.synth.plan import Call, FilePlan
from train.data.synth.world import IMPRINTS, associated_label


def call_frame_mask(calls: Iterable[Call], clip_s: float,
                    frame_rate_hz: float = STATS_FRAME_RATE_HZ) -> np.ndarray:
    """(frames,) bool: frames that any call overlaps (the project's frame convention)."""
    events = [Event(c.label, c.start_s, c.end_s) for c in calls]
    n = round(clip_s * frame_rate_hz)
    return events_to_frames(events, LABELS, n, frame_rate_hz).any(axis=1)


def event_counts(plans: Iterable[FilePlan]) -> dict[str, int]:
    counts = Counter(c.label for p in plans for c in p.calls)
    return {label: counts[label] for label in LABELS}


def split_stats(plans: list[FilePlan], config: SynthConfig) -> dict:
    call_frames = total_frames = 0
    for p in plans:
        mask = call_frame_mask(p.calls, config.clip_s)
        call_frames += int(mask.sum())
        total_frames += len(mask)
    return dict(files=len(plans), hours=round(len(plans) * config.clip_s / 3600, 4),
                annotated=plans[0].split in ANNOTATED_SPLITS if plans else False,
                events=event_counts(plans),
                call_frame_fraction=round(call_frames / max(total_frames, 1), 5),
                recorders=sorted({p.recorder.recorder_id for p in plans}),
                regions=sorted({p.recorder.region for p in plans}))


# --------------------------------------------------------------------------- subsets

def subset_order(plans: list[FilePlan], seed: int,
                 min_events: int = SUBSET_MIN_EVENTS) -> list[int]:
    """One deterministic order of the train files; every subset is a prefix of it.

    A random permutation, except that files are pulled forward the way a labelling campaign
    makes sure each class has examples before labelling at random: first those that add a
    class not seen yet (so even 1 % covers what it can), then those holding a class with fewer
    than `min_events` events so far.
    """
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(SUBSET_KEY,)))
    rest = [int(i) for i in rng.permutation(len(plans))]
    counts: Counter[str] = Counter()
    order: list[int] = []
    for target in (1, min_events):
        skipped = []
        for i in rest:
            labels = [c.label for c in plans[i].calls]
            if any(counts[label] < target for label in labels):
                order.append(i)
                counts.update(labels)
            else:
                skipped.append(i)
        rest = skipped
    return order + rest


def select_subsets(plans: list[FilePlan], seed: int) -> dict[str, list[str]]:
    """Nested label-budget subsets of the train plans: name -> sorted files, smallest first."""
    order = subset_order(plans, seed)
    return {subset_name(pct): sorted(plans[i].file for i in order[:subset_size(pct, len(plans))])
            for pct in SUBSET_PERCENTS}


# --------------------------------------------------------------------------- cues

def imprint_association(plans: list[FilePlan]) -> dict:
    """How often a call's label is the one its recorder's imprint kind is tied to in train.

    `lift` is that share over the share expected if imprint and label were independent (with
    the same margins): > 1 where the imprint predicts the label, ~1 where it says nothing, < 1
    where it misleads. `cramers_v` measures any imprint-label association (also a new one).
    """
    table = np.zeros((len(IMPRINTS), len(LABELS)))
    for p in plans:
        for c in p.calls:
            table[p.recorder.imprint, LABELS.index(c.label)] += 1
    n = table.sum()
    if n == 0:
        return dict(calls=0)
    tied = [LABELS.index(associated_label(k)) for k in range(len(IMPRINTS))]
    observed = sum(table[k, c] for k, c in enumerate(tied)) / n
    rows, cols = table.sum(1), table.sum(0)
    expected = sum(rows[k] * cols[c] for k, c in enumerate(tied)) / n ** 2
    outer = np.outer(rows, cols) / n
    used = outer > 0
    chi2 = float((((table - outer) ** 2)[used] / outer[used]).sum())
    dof = min(int((rows > 0).sum()), int((cols > 0).sum())) - 1
    return dict(calls=int(n), tied_share=round(float(observed), 4),
                expected_share=round(float(expected), 4),
                lift=round(float(observed / expected), 3) if expected else None,
                cramers_v=round(float(np.sqrt(chi2 / (n * dof))), 3) if dof > 0 else None)
