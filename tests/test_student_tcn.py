"""Temporal-context students (`tcn`, `tcn_small`): parameter budgets, the global-context
branch, configs and weights that older checkpoints saved, and one full-int8 TFLite
conversion (onnx2tf, 1-4 min on two shared cores) that must agree with PyTorch."""

import dataclasses
import json

import numpy as np
import pytest
import torch

from edge_runtime.contract.errors import UserError
from export.student import Student, StudentConfig, arch

MELS, CLASSES = 64, 6


@pytest.mark.parametrize("name", ["tcn", "tcn_small"])
def test_context_presets_fit_the_budget_and_see_the_whole_window(name):
    config = arch(name)
    params = Student(config, MELS, CLASSES).num_parameters()
    assert params <= 900_000  # <= 1 MB as int8 with per-channel scales and int32 biases
    assert config.receptive_field_frames >= 100 and config.context != "none"
    if name == "tcn":
        assert 300_000 <= params <= 600_000


@pytest.mark.parametrize("mode", ["gate", "add"])
def test_global_context_reaches_frames_beyond_the_receptive_field(mode):
    torch.manual_seed(0)
    base = StudentConfig(channels=16, kernel=3, dilations=(1,))  # receptive field 3 frames
    x = torch.randn(1, 100, MELS)
    poked = x.clone()
    poked[0, :10] += 3.0  # frames 0-9 change; frames 50-99 are far outside their reach
    for config, reaches in ((base, False), (dataclasses.replace(base, context=mode), True)):
        model = Student(config, MELS, CLASSES).eval()
        with torch.no_grad():
            far = (model(poked) - model(x))[0, 50:].abs().max().item()
        assert far > 1e-4 if reaches else far < 1e-6, (config, far)


def test_configs_round_trip_and_older_ones_load():
    config = StudentConfig.tcn()
    assert StudentConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    # A config saved before the context fields existed rebuilds the same architecture, whose
    # state dict has exactly the keys older students saved.
    old = {k: v for k, v in StudentConfig.pico().to_dict().items()
           if k not in ("context", "context_reduction")}
    assert StudentConfig.from_dict(old) == StudentConfig.pico()
    keys = Student(StudentConfig.from_dict(old), MELS, CLASSES).state_dict().keys()
    assert not any("context" in k for k in keys)
    with pytest.raises(UserError, match="context"):
        StudentConfig(context="attention")


# ---------------------------------------------------------------- full int8
def tensor_types(model_bytes: bytes) -> dict[str, set[str]]:
    """Operator name -> the types of the tensors it writes, from the TFLite flatbuffer."""
    from export.card import _schema
    from export.tflite import operators

    schema = _schema()
    model = schema.ModelT.InitFromPackedBuf(bytearray(model_bytes), 0)
    names = operators(model_bytes)
    types = {v: k for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
    out: dict[str, set[str]] = {}
    graph = model.subgraphs[0]
    for op in graph.operators:
        out.setdefault(names[op.opcodeIndex], set()).update(
            types[graph.tensors[i].type] for i in op.outputs)
    return out


def trained_student(root, name: str, steps: int = 60):
    """A student of `name` trained briefly on the tiny synthetic benchmark's labels (BCE),
    saved as a checkpoint: sharp enough that most frames sit far from the threshold, as in a
    real deployment."""
    from edge_runtime.contract.frontend import logmel
    from export.student import StudentSpec, default_frontend, save_student
    from train.data.dataset import Dataset
    from train.data.synth import LABELS, SynthConfig, generate

    data = root / "data"
    generate(SynthConfig.tiny(), data, workers=1, progress=False)
    clips = list(Dataset(data).clips(2.0, 1.0, 50.0, split="train"))
    frontend = default_frontend(16000)
    feats = logmel(np.stack([c.audio for c in clips]), frontend, 16000)
    frontend = dataclasses.replace(frontend, mean=round(float(feats.mean()), 6),
                                   std=round(float(feats.std()), 6))
    x = torch.from_numpy((feats - frontend.mean) / frontend.std)
    y = torch.from_numpy(np.stack([c.targets for c in clips]))
    torch.manual_seed(0)
    config = arch(name)
    model = Student(config, frontend.n_mels, len(LABELS)).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(0)
    for _ in range(steps):
        idx = torch.randint(len(x), (8,), generator=generator)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x[idx]), y[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    spec = StudentSpec(name, config, frontend, 16000, 2.0, 1.0, tuple(LABELS),
                       tuple([0.5] * len(LABELS)))
    save_student(root / f"{name}.pt", model.eval(), spec, {})
    return root / f"{name}.pt", data


@pytest.mark.parametrize("name", ["tcn_small"])
def test_context_student_converts_to_full_int8_that_agrees_with_pytorch(name, tmp_path):
    from edge_runtime.contract.frontend import logmel
    from export.backends import TFLiteRunner
    from export.quantize import CalibrationConfig, calibration_set
    from export.source import load_source
    from export.tflite import convert
    from export.verify import agreement
    from train.data.dataset import Dataset

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # two shared cores: oversubscription makes small convs crawl
    try:
        checkpoint, data = trained_student(tmp_path, name)
        source = load_source(checkpoint)
        calib = calibration_set(data, source.card, CalibrationConfig(max_clips=48))
        flat = convert(source, "int8", calib.features)  # refuses Flex ops itself
    finally:
        torch.set_num_threads(threads)

    # Every operator between the float input and output runs on int8 tensors, the context
    # branch (MEAN, LOGISTIC, MUL) and the band contrast (MEAN, SUB, CONCATENATION) included.
    types = tensor_types(flat)
    assert {"MEAN", "LOGISTIC", "MUL", "CONV_2D", "SUB", "CONCATENATION"} <= set(types), types
    assert types.pop("DEQUANTIZE") == {"FLOAT32"}
    assert all(t == {"INT8"} for t in types.values()), types
    assert len(flat) < 1_000_000

    runner = TFLiteRunner(flat)
    audio = np.stack([c.audio for c in Dataset(data).clips(2.0, 1.0, 50.0, split="test")])
    features = logmel(audio, source.card.frontend, source.card.sample_rate)
    got = np.concatenate([runner(features[i : i + 1]) for i in range(len(features))])
    with torch.no_grad():
        want = source.exported(torch.from_numpy(features)).numpy()
    agree = agreement(got.reshape(-1, CLASSES), want.reshape(-1, CLASSES),
                      np.array(source.card.thresholds))
    assert agree["frame_agreement"] >= 0.98, agree  # every label of the frame decided alike
    assert agree["correlation"] > 0.99, agree


def test_band_contrast_cancels_a_steady_tone_in_its_half_of_the_stem():
    """The contrast half of the stem sees each band minus its window mean, so a band that is
    raised for the whole window (a whine, the recorder's EQ) leaves it unchanged."""
    torch.manual_seed(0)
    config = StudentConfig(channels=16, kernel=3, dilations=(1,), band_contrast=True)
    model = Student(config, MELS, CLASSES).eval()
    assert model.stem.in_channels == 2 * MELS
    with torch.no_grad():
        model.stem.weight[:, :MELS] = 0.0  # keep only the contrast half
        x = torch.randn(2, 100, MELS)
        whine = x.clone()
        whine[:, :, 20] += 4.0  # band 20 louder in every frame of the window
        call = x.clone()
        call[:, 40:45, 20] += 4.0  # band 20 louder for five frames
        assert (model(whine) - model(x)).abs().max() < 1e-4
        assert (model(call) - model(x)).abs().max() > 1e-3
    assert StudentConfig.from_dict(config.to_dict()) == config
