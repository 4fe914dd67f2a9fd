"""A synthetic, MeerKAT-like benchmark: sparse animal calls in field noise, with metadata that
matters, and two cues planted to test MetaPerch fairly: one spurious, one robust.

`generate(config, out_dir)` (CLI: `meerkit synth OUT`) writes a dataset folder in the data
contract of DESIGN.md:

    audio/<split>/<split>_NNNNN.wav   mono 16-bit PCM, `config.clip_s` seconds each
    annotations.csv                   file,start_s,end_s,label,low_hz,high_hz,snr_db
                                      (no pretrain rows)
    metadata.csv                      file,lat,lon,elevation_m,recorded_at,recorder_id,site,habitat
    splits.csv                        file,split  (a partition: every file exactly once)
    labels.txt                        the label set, one per line, in LABELS order
    subsets/train_<P>pct.txt          nested label-budget subsets of train (P in SUBSET_PERCENTS)
    synth.json                        config, seed, generator version, stats, subsets, cues,
                                      regions, recorders; written last, so a folder with it
                                      is complete (synth.partial.json while generating)

What is modelled, and why:
* Six call classes with distinct spectro-temporal shapes (LABELS) within ~0.4-7 kHz, mostly
  1-6 kHz, 20-500 ms each, placed sparsely (by default ~95 % of 50-fps frames hold no call;
  synth.json records the fraction), each at its own SNR (`config.snr_db`, written to the
  `snr_db` column) relative to the ambient noise in the call's own band over the call's own
  span, before the recorder's channel (whose self-noise, hum and whine come on top).
* Ambient noise that varies per file: 1/f^alpha noise, wind rumble with gusts, an insect
  chorus (likelier at night and in summer), and unlabelled distractors (clicks, thumps, tonal
  blips) that a detector must learn to ignore.
* A world of regions -> sites -> recorders. Class priors depend on region, hour of day and
  day of year (dawn, diurnal, dusk and nocturnal callers; breeding seasons). Every recorder
  imprints its own channel: gain, EQ tilt, high-pass, mains hum at 50/60 Hz with its own
  harmonics, DC offset, self-noise.
* Spurious cue (what an adversarial recorder head should remove): every recorder is of one of
  six imprint kinds (IMPRINTS, like hardware models), each an in-band 1/3-octave resonance
  (+4..+8 dB) on the acoustic path plus a steady whine tone (-70..-60 dBFS: in the median
  file ~8 dB above the ambient in a 120 Hz band, ~2 dB below it in 1 kHz, so it costs a call
  whose band holds it ~2 dB of SNR), both inside 1.2-5.2 kHz where the calls are. In the
  train family (train/val/test/pretrain) a recorder's site favours the class tied to its
  imprint kind: that class calls `imprint_boost` (4) times as often as the region's prior
  says, the file's total rate unchanged, so the imprint predicts the label (lift ~2.2 in
  train: the tied class is ~38 % of calls against ~17 % if independent). In `shift` the same
  kinds recur, but each site favours another class (`imprint_shift="reversed"`, lift ~0.75:
  the imprint misleads) or none ("absent", lift ~1). A steady imprint vanishes under per-clip
  band centring (the teacher's input normalisation); with `whine_pulse_s` > 0 the whine
  switches on and off with a period of the recorder's own, which survives it.
* Robust cue (what a standard location / season head may exploit): call dialect. Every
  call's frequencies are shifted by `dialect_st_per_degree` (0.5) semitones per degree of
  latitude north of -27 deg plus up to +-`dialect_season_st` (0.75) semitones around the
  class's breeding peak, by one rule in every region, the unseen one included (karoo -2.7,
  kalahari 0, lowveld +1.0, namib +1.7 semitones). Hour and season priors are likewise the
  same functions everywhere. synth.json `cues` records both cues, their settings and the
  measured imprint-label association per split.
* Splits: `train`, `val`, `test` share regions and recorders; `shift` is a region *and*
  recorders seen nowhere else; `pretrain` is an unlabelled pool (audio + metadata, no
  annotation rows) drawn from the train family, so the shift region stays unseen even by
  self-supervised pretraining.
* Label budgets: `subsets/train_{1,5,10,25}pct.txt` are prefixes of one deterministic order of
  the train files (a random permutation that pulls forward files holding a class with fewer
  than 10 events so far), so each contains the smaller ones. They are lists beside
  `splits.csv` rather than split names, so `splits.csv` stays a partition. BUDGET_SUBSETS
  names those with >= 10 events of every class on the `default` preset (10 % and 25 %: the
  smaller ones hold too few calls, ~2 per file); synth.json `subsets` counts events per class.
* A small fraction of metadata cells (elevation_m, recorded_at, habitat) is left empty, as
  the contract allows, so consumers exercise their missing-value path.

Determinism: the world comes from SeedSequence(seed, spawn_key=(WORLD,)), and every file's
plan and audio from SeedSequence(seed, spawn_key=(split, index, ...)), so the output is
byte-identical for any number of workers, and growing one split leaves its other files as
they were. Files are written with `edge_runtime.contract.wav.write_wav` (not libsndfile, whose float
WAVs carry a timestamped PEAK chunk).

`plan_split` plans files (metadata, calls, noise) without rendering audio: it is what tests
and analyses use to look at priors over thousands of files in a fraction of a second.

Modules: config (SynthConfig, constants), world (regions, recorders, imprints, priors,
dialect), calls (call and distractor synthesisers), plan, render, stats, write (generate).
"""

from train.data.synth.config import (
    ANNOTATED_SPLITS,
    BUDGET_SUBSETS,
    GENERATOR_VERSION,
    LABELS,
    PRESETS,
    SPLITS,
    STATS_FRAME_RATE_HZ,
    SUBSET_MIN_EVENTS,
    SUBSET_PATH,
    SUBSET_PERCENTS,
    SynthConfig,
    subset_name,
    subset_size,
)
from train.data.synth.plan import Call, FilePlan, plan_file, plan_split
from train.data.synth.render import render_file, whine_period_s
from train.data.synth.stats import (
    call_frame_mask,
    event_counts,
    imprint_association,
    select_subsets,
    split_stats,
    subset_order,
)
from train.data.synth.world import (
    IMPRINTS,
    REGIONS,
    SHIFT_REGION,
    Recorder,
    Region,
    World,
    build_world,
    class_intensity,
    dialect_semitones,
    favoured_label,
    imprint_label,
    recorder_intensity,
)
from train.data.synth.write import OUTPUTS, SynthResult, generate

__all__ = [
    "ANNOTATED_SPLITS", "BUDGET_SUBSETS", "GENERATOR_VERSION", "IMPRINTS", "LABELS", "OUTPUTS",
    "PRESETS", "REGIONS", "SHIFT_REGION", "SPLITS", "STATS_FRAME_RATE_HZ", "SUBSET_MIN_EVENTS",
    "SUBSET_PATH", "SUBSET_PERCENTS", "Call", "FilePlan", "Recorder", "Region", "SynthConfig",
    "SynthResult", "World", "build_world", "call_frame_mask", "class_intensity",
    "dialect_semitones", "event_counts", "favoured_label", "generate", "imprint_association",
    "imprint_label", "plan_file", "plan_split", "recorder_intensity", "render_file",
    "select_subsets", "split_stats", "subset_name", "subset_order", "subset_size",
    "whine_period_s",
]
