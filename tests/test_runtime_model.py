"""edge_runtime.contract.model: carded TFLite artifacts, shape checks against the card, window function."""

import dataclasses
import importlib

import numpy as np
import pytest
from conftest import build_logmel_tflite, energy_reference

from edge_runtime.contract.card import Frontend, read_card
from edge_runtime.contract.errors import UserError
from edge_runtime.contract.model import TFLiteModel, interpreter_class, model_geometry, sigmoid


def test_window_fn_gives_the_models_probabilities(energy_model):
    model = TFLiteModel(energy_model)
    rng = np.random.default_rng(0)
    windows = (rng.standard_normal((3, 16000)) * np.array([[0.01], [0.2], [0.8]])).astype(np.float32)
    probs = model.window_fn(windows)
    assert probs.shape == (3, 50, 2) and probs.dtype == np.float32
    np.testing.assert_allclose(probs, energy_reference(windows), atol=2e-5)
    assert model.invokes == 3 and model.invoke_s > 0
    assert "energy-test" in model.describe() and "ai_edge_litert" in model.describe()


def test_prefers_ai_edge_litert():
    assert interpreter_class()[1] == "ai_edge_litert.interpreter"


def test_card_less_and_non_tflite_models_are_refused(energy_model, tmp_path):
    with pytest.raises(UserError, match="has no model card"):
        TFLiteModel(energy_model.with_name("energy-nocard.tflite"))
    junk = tmp_path / "junk.tflite"
    junk.write_bytes(b"\x00" * 64)
    with pytest.raises(UserError, match="not a TFLite model"):
        TFLiteModel(junk)
    with pytest.raises(UserError, match="TFLite only"):
        TFLiteModel(_touch(tmp_path / "m.onnx"))
    with pytest.raises(UserError, match="not found"):
        TFLiteModel(tmp_path / "missing.tflite")


def _touch(path):
    path.write_bytes(b"onnx")
    return path


def _recard(src, dst, **changes):
    embed = importlib.import_module("export.card").embed_card_tflite
    card = dataclasses.replace(read_card(src), **changes)
    flat = src.with_name(src.stem + "-nocard.tflite").read_bytes()
    dst.write_bytes(embed(flat, card))
    return dst


def test_card_and_interpreter_shapes_must_agree(energy_model, tmp_path):
    with pytest.raises(UserError, match=r"input shape \(1, 16000\) does not match the card: "
                                        r"expected \(1, 8000\)"):
        TFLiteModel(_recard(energy_model, tmp_path / "w.tflite", window_s=0.5, hop_s=0.25))
    with pytest.raises(UserError, match=r"output shape \(1, 50, 2\) does not match the card: "
                                        r"expected \(1, 50, 3\)"):
        TFLiteModel(_recard(energy_model, tmp_path / "l.tflite", labels=("a", "b", "c"),
                            thresholds=(0.5, 0.5, 0.5)))
    logmel = Frontend(kind="logmel", n_fft=512, win_length=400, hop_length=320, n_mels=32,
                      fmin=0.0, fmax=8000.0)
    with pytest.raises(UserError, match="log-mel features"):
        TFLiteModel(_recard(energy_model, tmp_path / "f.tflite", frontend=logmel))


def test_logmel_artifacts_get_numpy_features(tmp_path):
    pytest.importorskip("tensorflow")
    from edge_runtime.contract.frontend import logmel

    model = TFLiteModel(build_logmel_tflite(tmp_path / "lm.tflite"))
    x = (np.random.default_rng(1).standard_normal((2, 16000)) * 0.1).astype(np.float32)
    features = logmel(x, model.card.frontend, 16000)
    m = features.mean(-1)
    np.testing.assert_allclose(model.window_fn(x), sigmoid(np.stack([m, -m], -1)), atol=1e-5)


def test_hop_override_must_be_whole_frames(energy_model):
    card = read_card(energy_model)
    assert model_geometry(card).hop == 3200
    g = model_geometry(card, 0.3)
    assert (g.hop, g.hop_frames) == (4800, 15)
    with pytest.raises(UserError, match="not a whole number of output frames"):
        model_geometry(card, 0.015)
    with pytest.raises(UserError, match="must be in"):
        model_geometry(card, 2.0)
