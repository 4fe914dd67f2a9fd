"""edge_runtime.contract.model: carded TFLite artifacts, shape checks against the card, window function."""

import dataclasses
import importlib

import numpy as np
import pytest
from conftest import build_logmel_tflite, energy_reference

from edge_runtime.contract.card import Frontend, ModelCard, Quantization, read_card
from edge_runtime.contract.errors import UserError
from edge_runtime.contract.model import TFLiteModel, interpreter_class, model_geometry, sigmoid
from edge_runtime.contract.windows import WindowedStream, track


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


def test_lookahead_moves_the_frames_a_window_owns(energy_model):
    card = read_card(energy_model)  # 1 s windows of 50 frames
    centred = model_geometry(card, 0.2)
    assert (centred.lead, centred.lookahead_frames) == (20, 20)
    g = model_geometry(card, 0.2, lookahead_s=0.1)
    assert (g.lead, g.lookahead_frames) == (35, 5)
    assert model_geometry(card, 0.2, lookahead_s=0.0).lead == 40
    with pytest.raises(UserError, match="lookahead_s 0.9 must be in"):
        model_geometry(card, 0.2, lookahead_s=0.9)


def build_int8_logmel_tflite(path, int8_io: bool):
    """A full-int8 log-mel artifact (a 3-tap conv over 32 mels to 3 classes), with float or
    int8 input/output tensors: the quantise/dequantise steps of the runtime both ways."""
    import hashlib

    tf = pytest.importorskip("tensorflow")
    from export.card import embed_card_tflite

    frontend = Frontend(kind="logmel", n_fft=512, win_length=400, hop_length=320, n_mels=32,
                        fmin=50.0, fmax=8000.0, log_offset=1e-6, mean=-5.0, std=4.0)
    rng = np.random.default_rng(0)
    w = tf.constant((rng.standard_normal((3, 32, 3)) * 0.2).astype(np.float32))

    @tf.function(input_signature=[tf.TensorSpec([1, 50, 32], tf.float32)])
    def model(x):
        return tf.nn.conv1d(x, w, 1, "SAME")

    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [model.get_concrete_function()], model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: (
        [rng.standard_normal((1, 50, 32)).astype(np.float32)] for _ in range(20))
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    if int8_io:
        converter.inference_input_type = converter.inference_output_type = tf.int8
    flat = converter.convert()
    card = ModelCard(name="int8-test", version="1", sha256=hashlib.sha256(flat).hexdigest(),
                     sample_rate=16000, window_s=1.0, hop_s=0.2, frame_rate_hz=50.0,
                     labels=("a", "b", "c"), thresholds=(0.5,) * 3, frontend=frontend,
                     quantization=Quantization(mode="int8"))
    path.write_bytes(embed_card_tflite(flat, card))
    return path


@pytest.mark.parametrize("int8_io", [True, False], ids=["int8-io", "float-io"])
def test_window_fn_is_bit_identical_to_the_reference_path(tmp_path, int8_io):
    """Streaming front end, in-place quantisation into the input tensor, in-place dequantise
    and sigmoid: the same bits as float64 `logmel` -> `invoke` -> `sigmoid`, window by window,
    for a stream in any chunking (frames cached across pushes) and for bare batches."""
    from edge_runtime.contract.frontend import logmel

    model = TFLiteModel(build_int8_logmel_tflite(tmp_path / "q.tflite", int8_io))
    assert (model._in["dtype"] == np.int8) == int8_io
    card, g = model.card, model_geometry(model.card)
    rng = np.random.default_rng(3)
    t = np.arange(8 * 16000) / 16000
    audio = (0.003 * rng.standard_normal(len(t)) + 0.5 * np.sin(2 * np.pi * 900 * t * (1 + t))
             * (np.sin(2 * np.pi * 0.7 * t) > 0.3)).astype(np.float32)

    def reference(windows):
        x = logmel(windows, card.frontend, card.sample_rate)
        return np.stack([sigmoid(model.invoke(x[i : i + 1])[0]) for i in range(len(x))])

    expected = track(audio, g, reference)
    np.testing.assert_array_equal(track(audio, g, model.window_fn), expected)
    stream, parts, pos = WindowedStream(g, model.window_fn, batch=3), [], 0
    while pos < len(audio):
        step = int(rng.integers(100, 9000))
        parts.append(stream.push(audio[pos : pos + step]))
        pos += step
    parts.append(stream.flush())
    np.testing.assert_array_equal(np.concatenate([p for p in parts if p.size]), expected)
    windows = np.stack([audio[:16000], audio[5000:21000]])
    np.testing.assert_array_equal(model.window_fn(windows), reference(windows))
