"""Frame probabilities -> events, and events -> frame targets: the one implementation shared by
training evaluation, export verification and the field runtime.

Frame convention: frame k of a stream starting at `start_s` covers
[start_s + k/fr, start_s + (k+1)/fr). A decoded event spanning frames [a, b) has
start_s = start_s0 + a/fr and end_s = start_s0 + b/fr.

Decoding, per class (`DecoderConfig`; each setting is one value or one per class, and a
class with `emit` False is not decoded at all):
1. hysteresis: an event switches on at a frame with p >= threshold and stays on while
   p >= threshold - hysteresis (and p > 0, so an off threshold that clips to 0 still ends);
2. merge: events of one class whose gap is <= merge_gap_s are joined (confidence then covers
   the gap frames too);
3. min duration: merged events shorter than min_duration_s are dropped;
4. max duration: longer events are cut into consecutive chunks of max_duration_s (the last
   chunk may be shorter, even shorter than min_duration_s).
Durations are converted to whole frames with a 1e-9-frame tolerance
(merge gap: floor, min duration: ceil, max duration: floor).

`StreamingDecoder` gives exactly the batch events for any chunking of the input; it emits
each event as soon as it can no longer change, so its output across pushes is ordered per
class but not across classes (waiting for every class would let one long event of class A
hold back all others). Sort by (start_s, label) to compare with `decode_events`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from numbers import Real

import numpy as np

from edge_runtime.contract.errors import UserError

_EPS_FRAMES = 1e-9  # tolerance when turning seconds into whole frames
_EPS_OVERLAP = 1e-6  # events_to_frames: overlaps below this fraction of a frame are float noise


@dataclass(frozen=True)
class Event:
    label: str
    start_s: float
    end_s: float
    confidence_max: float = 1.0
    confidence_mean: float = 1.0
    file: str = ""  # which recording (dataset-relative path); matching is per (file, label)
    onset_frame: int = -1  # absolute frame index of the onset in its stream; -1 if unknown

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s


@dataclass
class DecoderConfig:
    """How frame probabilities become events (see the module docstring for the order)."""

    threshold: float | Sequence[float] = 0.5  # on threshold
    hysteresis: float | Sequence[float] = 0.1  # stay on while p >= threshold - hysteresis
    min_duration_s: float | Sequence[float] = 0.0  # shorter (merged) events are dropped
    merge_gap_s: float | Sequence[float] = 0.0  # same-class events this close are merged
    max_duration_s: float | None = None  # longer events are split into chunks of this length
    emit: bool | Sequence[bool] = True  # False: the class is never decoded (label suppressed)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        for name in ("threshold", "hysteresis", "min_duration_s", "merge_gap_s"):
            raw = getattr(self, name)
            values = [raw] if isinstance(raw, Real) else list(raw)
            if not values:
                raise UserError(f"decoder config: {name} list is empty")
            for v in values:
                if name == "threshold":
                    if not isinstance(v, Real) or not 0.0 <= v <= 1.0:
                        raise UserError(f"decoder config: threshold must be in [0, 1], got {v!r}")
                elif not isinstance(v, Real) or not v >= 0.0 or math.isinf(v):
                    raise UserError(
                        f"decoder config: {name} must be a finite number >= 0, got {v!r}"
                    )
        emit = [self.emit] if isinstance(self.emit, bool) else list(self.emit)
        if not emit or not all(isinstance(v, bool | np.bool_) for v in emit):
            raise UserError(f"decoder config: emit must be true/false per class, got {self.emit!r}")
        m = self.max_duration_s
        if m is not None and (not isinstance(m, Real) or not 0.0 < m < math.inf):
            raise UserError(f"decoder config: max_duration_s must be > 0 or None, got {m!r}")

    def thresholds(self, labels: Sequence[str]) -> np.ndarray:
        """Per-class on thresholds, shape (C,) float64."""
        return self.per_class("threshold", labels)

    def per_class(self, name: str, labels: Sequence[str]) -> np.ndarray:
        """Setting `name` (threshold, hysteresis, min_duration_s, merge_gap_s, emit) for each
        class, shape (C,): float64, bool for emit."""
        raw = getattr(self, name)
        dtype = bool if name == "emit" else np.float64
        if isinstance(raw, Real):  # bool is a Real too
            return np.full(len(labels), raw, dtype=dtype)
        if len(raw) != len(labels):
            what = "thresholds" if name == "threshold" else f"{name} values"
            raise UserError(
                f"decoder config: {len(raw)} {what} given for {len(labels)} labels "
                f"({', '.join(labels)})"
            )
        return np.asarray(raw, dtype=dtype)


@dataclass
class _ClassState:
    """Per-class decoder state; O(1) apart from the gap buffer (<= merge gap frames)."""

    open: bool = False  # an active run reaches the last pushed frame
    alive: bool = False  # a (merged) event exists that is not yet emitted in full
    onset: int = 0  # onset frame of the merged event
    end: int = 0  # end (exclusive) of the frames confirmed to belong to it
    chunk_start: int = 0  # first frame of the chunk being accumulated
    chunk_sum: float = 0.0  # sequential float64 sum over [chunk_start, end)
    chunk_max: float = -math.inf
    held: list[tuple[int, int, float, float]] = field(default_factory=list)  # full chunks
    gap: np.ndarray = field(default_factory=lambda: np.empty(0))  # frames after `end`


class StreamingDecoder:
    """Decode (frames, C) probabilities pushed in chunks of any size into events."""

    def __init__(
        self,
        labels: Sequence[str],
        frame_rate_hz: float,
        config: DecoderConfig | None = None,
        start_s: float = 0.0,
        file: str = "",
    ) -> None:
        self.labels = list(labels)
        if not self.labels or len(set(self.labels)) != len(self.labels):
            raise UserError(f"decoder: labels must be unique and non-empty, got {self.labels}")
        if not frame_rate_hz > 0 or math.isinf(frame_rate_hz):
            raise UserError(f"decoder: frame_rate_hz must be > 0, got {frame_rate_hz!r}")
        self.config = config or DecoderConfig()
        self.config.validate()
        self.frame_rate_hz = float(frame_rate_hz)
        self.start_s = float(start_s)
        self.file = file
        self._on = self.config.thresholds(self.labels)
        self._off = np.maximum(self._on - self.config.per_class("hysteresis", self.labels), 0.0)
        self._emit = self.config.per_class("emit", self.labels).tolist()
        self._emit_mask = np.array(self._emit, bool)
        self._fast = True  # skip idle classes (tests switch it off to compare both paths)
        fr = self.frame_rate_hz
        self._gap_frames = [math.floor(g * fr + _EPS_FRAMES)
                            for g in self.config.per_class("merge_gap_s", self.labels).tolist()]
        self._min_frames = [math.ceil(m * fr - _EPS_FRAMES)
                            for m in self.config.per_class("min_duration_s", self.labels).tolist()]
        if self.config.max_duration_s is None:
            self._max_frames = math.inf
        else:
            self._max_frames = math.floor(self.config.max_duration_s * fr + _EPS_FRAMES)
            if self._max_frames < 1:
                raise UserError(
                    f"decoder config: max_duration_s={self.config.max_duration_s} is shorter "
                    f"than one frame at {fr} Hz"
                )
        self._states = [_ClassState() for _ in self.labels]
        self._n = 0  # frames pushed so far
        self._flushed = False

    @property
    def frames_pushed(self) -> int:
        return self._n

    def push(self, probs: np.ndarray) -> list[Event]:
        """Add (frames, C) probabilities; return the events that became final, sorted."""
        if self._flushed:
            raise RuntimeError("StreamingDecoder.push after flush(); start a new decoder")
        x = np.asarray(probs, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != len(self.labels):
            raise ValueError(f"probs must be (frames, {len(self.labels)}), got {x.shape}")
        if not np.isfinite(x).all():
            raise ValueError("probs contain NaN or inf")
        out: list[Event] = []
        if not len(x):
            return out
        # Fast path: a class with no event pending (none open, none waiting for a merge) and
        # no frame at its on threshold in this push cannot change; skip it. When that holds
        # for every class (the common case: nothing is happening) the push is one comparison.
        visit = self._emit_mask & ((x >= self._on).any(axis=0) | (not self._fast))
        pending = [c for c, st in enumerate(self._states) if st.alive or st.open]
        if visit.any() or pending:
            visit[pending] = True
            active = self._active_mask(x)
            for c in np.flatnonzero(visit).tolist():
                if self._emit[c]:
                    self._push_class(c, self._states[c], x[:, c], active[:, c], out)
        self._n += len(x)
        return _sorted(out)

    def flush(self) -> list[Event]:
        """End the stream: close open events and return everything still pending, sorted."""
        if self._flushed:
            return []
        self._flushed = True
        out: list[Event] = []
        for c, st in enumerate(self._states):
            if st.alive:
                self._finish(c, st, out)
        return _sorted(out)

    def _active_mask(self, x: np.ndarray) -> np.ndarray:
        return active_frames(x, self._on, self._off, np.array([st.open for st in self._states]))

    def _push_class(
        self, c: int, st: _ClassState, x: np.ndarray, active: np.ndarray, out: list[Event]
    ) -> None:
        # Work on the gap buffer + new frames so merged gaps can reach back into older pushes.
        xe = np.concatenate([st.gap, x]) if len(st.gap) else x
        base = self._n - len(st.gap)  # absolute frame index of xe[0]
        k0 = len(st.gap)
        edges = np.flatnonzero(np.diff(np.concatenate([[False], active, [False]]).astype(np.int8)))
        was_open, st.open = st.open, False
        for s, e in zip((edges[0::2] + k0).tolist(), (edges[1::2] + k0).tolist(), strict=True):
            if was_open and s == 0:  # the open event continues into this push
                self._consume(st, xe[s:e])
            elif st.alive and base + s - st.end <= self._gap_frames[c]:  # merge over the gap
                self._consume(st, xe[st.end - base : e])
            else:
                if st.alive:
                    self._finish(c, st, out)
                self._start(st, base + s)
                self._consume(st, xe[s:e])
            st.open = e == len(xe)
            out.extend(self._take_ready(c, st))
        if st.alive and not st.open:
            if base + len(xe) - st.end > self._gap_frames[c]:  # no later onset can merge now
                self._finish(c, st, out)
                st.gap = np.empty(0)
            else:
                st.gap = xe[st.end - base :].copy()
        else:
            st.gap = np.empty(0)

    def _start(self, st: _ClassState, frame: int) -> None:
        st.alive, st.onset, st.end = True, frame, frame
        st.chunk_start, st.chunk_sum, st.chunk_max = frame, 0.0, -math.inf
        st.held = []

    def _consume(self, st: _ClassState, v: np.ndarray) -> None:
        """Append confirmed frames `v` (starting at st.end) to the event, chunk by chunk."""
        while len(v):
            room = self._max_frames - (st.end - st.chunk_start)
            take = v if room >= len(v) else v[: int(room)]
            v = v[len(take) :]
            # Sequential float64 sum continuing from the carry, so any chunking gives the same
            # bits. Short runs (the common case) are cheaper as Python floats: same adds.
            if len(take) <= 64:
                vals = take.tolist()
                total = st.chunk_sum
                for val in vals:
                    total += val
                st.chunk_sum, top = total, max(vals)
            else:
                acc = np.add.accumulate(np.concatenate([[st.chunk_sum], take]))
                st.chunk_sum, top = float(acc[-1]), float(take.max())
            st.chunk_max = max(st.chunk_max, top)
            st.end += len(take)
            if st.end - st.chunk_start == self._max_frames:
                st.held.append((st.chunk_start, st.end, st.chunk_max, st.chunk_sum))
                st.chunk_start, st.chunk_sum, st.chunk_max = st.end, 0.0, -math.inf

    def _take_ready(self, c: int, st: _ClassState) -> list[Event]:
        """Full chunks of an event already long enough to survive min_duration are final."""
        if not st.held or st.end - st.onset < self._min_frames[c]:
            return []
        events = [self._event(c, *h) for h in st.held]
        st.held = []
        return events

    def _finish(self, c: int, st: _ClassState, out: list[Event]) -> None:
        if st.end - st.onset >= self._min_frames[c]:
            out.extend(self._event(c, *h) for h in st.held)
            if st.end > st.chunk_start:
                out.append(self._event(c, st.chunk_start, st.end, st.chunk_max, st.chunk_sum))
        st.alive, st.open, st.held = False, False, []

    def _event(self, c: int, a: int, b: int, vmax: float, vsum: float) -> Event:
        fr = self.frame_rate_hz
        return Event(
            label=self.labels[c],
            start_s=self.start_s + a / fr,
            end_s=self.start_s + b / fr,
            confidence_max=vmax,
            confidence_mean=vsum / (b - a),
            file=self.file,
            onset_frame=a,
        )


def active_frames(
    x: np.ndarray, on: np.ndarray, off: np.ndarray, open_before: np.ndarray | None = None
) -> np.ndarray:
    """Hysteresis, vectorised: (frames, C) bool, True where a frame belongs to an event run
    (before merging and durations). `on`/`off`: (C,) thresholds (off already clipped at 0);
    `open_before`: (C,) bool, a run still open from earlier frames (streaming)."""
    on_ = x >= on
    cont = ((x >= off) & (x > 0.0)) | on_  # frames an open event may continue over
    idx = np.arange(len(x))[:, None]
    prev = np.vstack([np.zeros((1, x.shape[1]), bool), cont[:-1]])
    run_start = np.maximum.accumulate(np.where(cont & ~prev, idx, -1), axis=0)
    last_on = np.maximum.accumulate(np.where(on_, idx, -1), axis=0)
    # a frame is active if its run of `cont` frames was switched on at or before it
    active = cont & (last_on >= run_start)
    if open_before is not None:
        active |= cont & (np.asarray(open_before, bool)[None, :] & (run_start == 0))
    return active


def _sorted(events: list[Event]) -> list[Event]:
    return sorted(events, key=lambda e: (e.start_s, e.label))


def decode_events(
    probs: np.ndarray,
    labels: Sequence[str],
    frame_rate_hz: float,
    config: DecoderConfig | None = None,
    start_s: float = 0.0,
    file: str = "",
) -> list[Event]:
    """Decode a whole (frames, C) probability matrix; events sorted by (start_s, label)."""
    dec = StreamingDecoder(labels, frame_rate_hz, config, start_s=start_s, file=file)
    return _sorted(dec.push(probs) + dec.flush())


def events_to_frames(
    events: Sequence[Event],
    labels: Sequence[str],
    n_frames: int,
    frame_rate_hz: float,
    start_s: float = 0.0,
) -> np.ndarray:
    """(n_frames, C) float32 0/1 targets: an event marks every frame it overlaps by > 0 s.

    Events reaching outside the clip are clipped; zero-length events mark nothing.
    """
    index = {label: i for i, label in enumerate(labels)}
    y = np.zeros((n_frames, len(labels)), dtype=np.float32)
    for ev in events:
        if ev.label not in index:
            raise UserError(
                f"{ev.file or 'events'}: label {ev.label!r} at {ev.start_s:.3f} s is not one of "
                f"the model's labels ({', '.join(labels)})"
            )
        if ev.end_s < ev.start_s:
            raise UserError(
                f"{ev.file or 'events'}: event {ev.label!r} ends ({ev.end_s}) before it starts "
                f"({ev.start_s})"
            )
        # frames k with k < end*fr and k + 1 > start*fr, ignoring float noise at the edges
        a = math.floor((ev.start_s - start_s) * frame_rate_hz + _EPS_OVERLAP)
        b = math.ceil((ev.end_s - start_s) * frame_rate_hz - _EPS_OVERLAP)
        a, b = max(a, 0), min(b, n_frames)
        if b > a:
            y[a:b, index[ev.label]] = 1.0
    return y
