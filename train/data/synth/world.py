"""The world: regions -> sites -> recorders (with their channel imprints), class priors over
region, hour and season, the recorders' favoured classes (the spurious cue) and call dialects
(the robust cue)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from train.data.synth.config import LABELS, WORLD_KEY, SynthConfig


@dataclass(frozen=True)
class Region:
    name: str
    lat: float
    lon: float
    elevation_m: float
    habitat: str
    class_weights: tuple[float, ...]  # relative abundance, in LABELS order
    wind_prob: float
    utc_offset_h: int = 2


REGIONS = (
    Region("kalahari", -26.98, 21.83, 900, "arid savanna", (1.0, 0.6, 0.3, 1.2, 1.5, 0.5), 0.5),
    Region("karoo", -32.35, 22.58, 1050, "succulent karoo shrubland",
           (0.5, 1.2, 0.8, 0.4, 0.6, 1.5), 0.7),
    Region("lowveld", -24.99, 31.59, 350, "mopane woodland", (1.2, 0.8, 1.5, 0.8, 0.3, 0.8), 0.3),
    Region("namib", -23.55, 15.05, 600, "desert gravel plains", (0.6, 0.5, 0.6, 1.5, 1.6, 0.5),
           0.8),
)
SHIFT_REGION = "namib"
REGION = {r.name: r for r in REGIONS}

# In-band imprint kinds (think: recorder models), at 16 kHz: (resonance centre Hz, whine Hz).
# Kind k is tied to LABELS[k] in the train family (see `favoured_label`). Every kind is used
# in both the train family and the shift region, so a model that learnt "whine at 2.9 kHz ->
# upsweeps" in train meets the same whine in shift, where it means something else.
IMPRINTS = ((1600.0, 2900.0), (4200.0, 1500.0), (2400.0, 5200.0), (5000.0, 2200.0),
            (1200.0, 3800.0), (3300.0, 4600.0))
RESONANCE_DB = (4.0, 8.0)  # peak gain of the resonance (1/3-octave bell)
WHINE_DBFS = (-70.0, -60.0)  # RMS of the whine tone (electrical: not scaled by the gain)
assert len(IMPRINTS) == len(LABELS)

# Dialect: pitch rises with latitude (north of this, higher) and around each class's breeding peak.
DIALECT_REF_LAT = -27.0


@dataclass(frozen=True)
class Recorder:
    """One field recorder at one site, with the channel it imprints on everything it records."""

    recorder_id: str
    site: str
    region: str
    lat: float
    lon: float
    elevation_m: float
    gain_db: float
    tilt_db_per_octave: float
    highpass_hz: float
    hum_hz: float
    hum_dbfs: float  # level of the fundamental
    hum_harmonics: tuple[float, ...]  # relative amplitude of harmonics 1..len
    dc_offset: float
    floor_dbfs: float  # self-noise, white
    imprint: int  # index into IMPRINTS
    resonance_hz: float  # at 16 kHz (scaled down with the calls at lower rates)
    resonance_db: float
    whine_hz: float  # at 16 kHz
    whine_dbfs: float

    @property
    def is_shift(self) -> bool:
        return self.region == SHIFT_REGION


@dataclass(frozen=True)
class World:
    recorders: tuple[Recorder, ...]

    def recorders_for(self, split: str) -> list[Recorder]:
        """Shift gets the shift region's recorders; every other split the train family's."""
        want_shift = split == "shift"
        return [r for r in self.recorders if r.is_shift == want_shift]


def _imprint_kinds(seed: int, n_family: int, n_shift: int) -> tuple[np.ndarray, np.ndarray]:
    """Balanced imprint kinds for the train-family and shift recorders (own stream, so the
    other recorder parameters do not depend on how imprints are drawn)."""
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(WORLD_KEY, 1)))
    k = len(IMPRINTS)
    family = rng.permutation(np.resize(np.arange(k), n_family))
    shift = rng.permutation(np.resize(np.arange(k), n_shift))
    return family, shift


def build_world(seed: int, sites_per_region: int = 3, recorders_per_site: int = 2) -> World:
    """Sites and recorders, deterministic from the seed."""
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(WORLD_KEY,)))
    per_region = sites_per_region * recorders_per_site
    n_shift = sum(per_region for r in REGIONS if r.name == SHIFT_REGION)
    kinds = dict(zip((False, True), _imprint_kinds(seed, len(REGIONS) * per_region - n_shift,
                                                   n_shift), strict=True))
    used = {False: 0, True: 0}
    recorders = []
    for region in REGIONS:
        shift = region.name == SHIFT_REGION
        for s in range(sites_per_region):
            site = f"{region.name}-{s + 1:02d}"
            lat = region.lat + rng.normal(0, 0.25)
            lon = region.lon + rng.normal(0, 0.25)
            elevation = region.elevation_m + rng.normal(0, 60)
            for k in range(recorders_per_site):
                harmonics = 10 ** (rng.uniform(-30, 0, 8) / 20) / np.arange(1, 9) ** 0.5
                harmonics[0] = 1.0
                imprint = int(kinds[shift][used[shift]])
                used[shift] += 1
                resonance_hz, whine_hz = IMPRINTS[imprint]
                recorders.append(Recorder(
                    recorder_id=f"{region.name[:3].upper()}{s + 1:02d}-{'AB'[k]}",
                    site=site, region=region.name,
                    lat=round(lat + rng.normal(0, 0.002), 5),
                    lon=round(lon + rng.normal(0, 0.002), 5),
                    elevation_m=round(elevation + rng.normal(0, 5)),
                    gain_db=rng.uniform(-6, 6),
                    tilt_db_per_octave=rng.uniform(-3, 3),
                    highpass_hz=rng.uniform(20, 300),
                    # Shifted hardware: the unseen region's recorders more often hum at 60 Hz.
                    hum_hz=(60.0 if rng.random() < (0.5 if shift else 0.15) else 50.0)
                    * (1 + rng.normal(0, 0.001)),
                    hum_dbfs=rng.uniform(-80, -40),
                    hum_harmonics=tuple(float(h) for h in harmonics),
                    dc_offset=rng.uniform(-0.01, 0.01),
                    floor_dbfs=rng.uniform(-75, -60),
                    imprint=imprint,
                    # Units of one kind differ a little; the spread stays far below the gaps
                    # between kinds, so the kind is what a model can pick up.
                    resonance_hz=resonance_hz * (1 + rng.normal(0, 0.02)),
                    resonance_db=rng.uniform(*RESONANCE_DB),
                    whine_hz=whine_hz * (1 + rng.normal(0, 0.005)),
                    whine_dbfs=rng.uniform(*WHINE_DBFS),
                ))
    return World(tuple(recorders))


def associated_label(imprint: int) -> str:
    """The class an imprint kind is tied to in the train family."""
    return LABELS[imprint]


def favoured_label(rec: Recorder, config: SynthConfig) -> str | None:
    """The class this recorder's site favours (see `imprint_label`)."""
    return imprint_label(rec.imprint, rec.is_shift, config)


def imprint_label(imprint: int, shift: bool, config: SynthConfig) -> str | None:
    """The class favoured where a recorder of this imprint kind stands: the kind's own class
    in the train family; in shift another class ("reversed": half-way round LABELS) or none
    ("absent")."""
    if config.imprint_boost == 1:
        return None
    if not shift:
        return associated_label(imprint)
    if config.imprint_shift == "absent":
        return None
    return LABELS[(imprint + len(LABELS) // 2) % len(LABELS)]


# --------------------------------------------------------------------------- priors

def bump(hour: np.ndarray, centre: float, width: float) -> np.ndarray:
    d = (hour - centre + 12.0) % 24.0 - 12.0  # circular distance in hours
    return np.exp(-0.5 * (d / width) ** 2)


# Per label: (always, dawn, day, dusk, night) activity, then (season amplitude, peak day of year).
_DIEL = np.array([
    (0.15, 1.5, 0.6, 0.0, 0.0),  # upsweep: dawn chorus, diurnal
    (0.10, 0.0, 1.0, 0.0, 0.0),  # harmonic_down: diurnal
    (0.10, 1.0, 0.0, 1.2, 0.0),  # trill: crepuscular
    (0.10, 0.0, 0.0, 0.0, 1.2),  # click_train: nocturnal
    (0.50, 0.0, 0.3, 0.0, 0.0),  # noise_burst: any time
    (0.10, 1.2, 0.0, 0.6, 0.0),  # two_note: dawn and dusk, breeding season
])
_SEASON = np.array([(0.4, 300), (0.1, 60), (0.5, 30), (0.2, 200), (0.1, 0), (0.8, 320)])
SEASON_PEAK_DOY = {label: int(day) for label, day in zip(LABELS, _SEASON[:, 1], strict=True)}


def class_intensity(region: str, hour: np.ndarray | float, doy: np.ndarray | float) -> np.ndarray:
    """Relative call rate per label (last axis) at local `hour` (0-24) and day of year."""
    hour, doy = np.asarray(hour, float), np.asarray(doy, float)[..., None]
    parts = np.stack([np.ones_like(hour), bump(hour, 6.0, 1.2), bump(hour, 12.5, 3.0),
                      bump(hour, 18.5, 1.2), bump(hour, 0.0, 3.0)], axis=-1)
    diel = parts @ _DIEL.T  # (..., labels)
    season = 1.0 + _SEASON[:, 0] * np.cos(2 * np.pi * (doy - _SEASON[:, 1]) / 365.0)
    return np.asarray(REGION[region].class_weights) * diel * season


def recorder_intensity(rec: Recorder, config: SynthConfig, hour: float, doy: float) -> np.ndarray:
    """`class_intensity` with the recorder's favoured class boosted, total rate unchanged."""
    base = class_intensity(rec.region, hour, doy)
    favoured = favoured_label(rec, config)
    if favoured is None:
        return base
    boosted = base.copy()
    boosted[LABELS.index(favoured)] *= config.imprint_boost
    return boosted * (base.sum() / boosted.sum())


def _mean_total_intensity() -> float:
    """Normaliser so that `calls_per_minute` is the mean rate over train regions and the year."""
    hours, days = np.meshgrid(np.arange(0, 24, 0.25), np.arange(0, 365, 5.0))
    totals = [class_intensity(r.name, hours, days).sum(-1).mean()
              for r in REGIONS if r.name != SHIFT_REGION]
    return float(np.mean(totals))


MEAN_INTENSITY = _mean_total_intensity()


def dialect_semitones(config: SynthConfig, lat: float, doy: float) -> np.ndarray:
    """(labels,) pitch offset of each class's calls at latitude `lat` on day of year `doy`.

    The same rule holds in every region, the unseen one included: a cline north (higher)
    plus a seasonal swing that peaks with each class's breeding season.
    """
    season = np.cos(2 * np.pi * (doy - _SEASON[:, 1]) / 365.0)
    cline = config.dialect_st_per_degree * (lat - DIALECT_REF_LAT)
    return cline + config.dialect_season_st * season
