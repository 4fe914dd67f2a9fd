"""Metadata targets of `ClipDataset`: hiding a fraction of the files' metadata per field."""

from __future__ import annotations

import numpy as np
import pytest

from edge_runtime.contract.errors import UserError
from edge_runtime.contract.wav import write_wav
from train.config import MetadataHeadConfig
from train.data.dataset import Dataset
from train.data.torch_data import ClipDataset, fit_metadata_heads, hidden_metadata

SR, N_FILES = 8000, 20
HEADS = (MetadataHeadConfig("location", "location"), MetadataHeadConfig("time_of_day", "circular"),
         MetadataHeadConfig("day_of_year", "circular"),
         MetadataHeadConfig("recorder_id", "class", mode="adversarial"))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Dataset:
    root = tmp_path_factory.mktemp("meta")
    rng = np.random.default_rng(0)
    files = [f"f{i:02d}.wav" for i in range(N_FILES)]
    (root / "audio").mkdir()
    for f in files:
        write_wav(root / "audio" / f, 0.1 * rng.standard_normal(SR // 2).astype(np.float32), SR,
                  bits=16)
    (root / "annotations.csv").write_text("file,start_s,end_s,label\nf00.wav,0.1,0.2,call\n")
    rows = [f"{f},-25.{i:02d},31.5,2024-05-01T06:{i:02d}:00+02:00,R{i % 3}"
            for i, f in enumerate(files)]
    (root / "metadata.csv").write_text("file,lat,lon,recorded_at,recorder_id\n"
                                       + "\n".join(rows) + "\n")
    return Dataset(root)


def _valid(ds: Dataset, frac: float, seed: int) -> dict[str, set[str]]:
    """head -> files whose target is valid."""
    heads = fit_metadata_heads(HEADS, ds, ds.files)
    clips = ClipDataset(ds, ds.files, 0.5, 50.0, heads, metadata_missing_frac=frac,
                        metadata_missing_seed=seed)
    valid: dict[str, set[str]] = {h.name: set() for h in heads}
    for i, clip in enumerate(clips.clips):
        item = clips[i]
        for name, ok in item["valid"].items():
            if ok:
                valid[name].add(clip.file)
            elif name == "recorder_id":  # hidden like a missing cell: no class index
                assert int(item["meta"][name]) == -1
    return valid


def test_metadata_missing_fraction_hides_fields_per_file(dataset: Dataset) -> None:
    assert all(v == set(dataset.files) for v in _valid(dataset, 0.0, 0).values())
    half = _valid(dataset, 0.5, 0)
    assert {len(v) for v in half.values()} == {N_FILES // 2}  # exactly that fraction
    # one clock: both time heads go missing together; other fields independently
    assert half["time_of_day"] == half["day_of_year"]
    assert half["location"] != half["recorder_id"] != half["time_of_day"] != half["location"]
    assert _valid(dataset, 0.5, 0) == half  # deterministic by seed...
    assert _valid(dataset, 0.5, 1) != half  # ...and the seed matters
    ninety = _valid(dataset, 0.9, 0)
    assert {len(v) for v in ninety.values()} == {N_FILES // 10}
    assert not any(_valid(dataset, 1.0, 0).values())
    with pytest.raises(UserError, match="missing fraction"):
        ClipDataset(dataset, dataset.files, 0.5, 50.0, HEADS, metadata_missing_frac=1.5)


def test_hidden_choice_ignores_file_order(dataset: Dataset) -> None:
    files = list(dataset.files)
    a = hidden_metadata(files, ["lat,lon", "recorded_at"], 0.5, 3)
    b = hidden_metadata(files[::-1], ["recorded_at", "lat,lon"], 0.5, 3)
    assert a == b and a["lat,lon"] != a["recorded_at"]
