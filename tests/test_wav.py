import numpy as np
import pytest

from edge_runtime.contract.errors import UserError
from edge_runtime.contract.wav import read_wav, wav_info, write_wav

sf = pytest.importorskip("soundfile")


@pytest.mark.parametrize(
    "subtype,bits,tol",
    [("PCM_U8", 8, 1 / 64), ("PCM_16", 16, 1e-4), ("PCM_24", 24, 1e-6), ("PCM_32", 32, 1e-8),
     ("FLOAT", 32, 0), ("DOUBLE", 64, 1e-7)],
)
def test_reads_what_libsndfile_writes(tmp_path, subtype, bits, tol):
    rng = np.random.default_rng(0)
    x = rng.uniform(-0.9, 0.9, size=(1000, 2)).astype(np.float32)
    path = tmp_path / f"{subtype}.wav"
    sf.write(path, x, 22050, subtype=subtype)
    y, info = read_wav(path)
    ref, _ = sf.read(path, dtype="float32", always_2d=True)
    assert info.sample_rate == 22050 and info.channels == 2 and info.bits_per_sample == bits
    assert y.shape == (1000, 2) and not info.truncated
    np.testing.assert_allclose(y, ref, atol=max(tol, 1e-7))
    assert wav_info(path) == info


@pytest.mark.parametrize("bits", [16, 24, 32, -32])
def test_write_matches_libsndfile_read(tmp_path, bits):
    x = np.linspace(-1, 0.999, 4801, dtype=np.float32)
    path = tmp_path / "w.wav"
    write_wav(path, x, 16000, bits=bits)
    ref, sr = sf.read(path, dtype="float32")
    assert sr == 16000
    np.testing.assert_allclose(ref, x, atol=2.0 ** -(abs(bits) - 1) if bits > 0 else 0)


def test_truncated_file_reads_whole_frames_and_says_so(tmp_path):
    path = tmp_path / "t.wav"
    write_wav(path, np.zeros((1000, 2)), 8000)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 501])  # cut mid-frame
    y, info = read_wav(path)
    assert info.truncated and y.shape == ((1000 * 4 - 501) // 4, 2)


@pytest.mark.parametrize("payload,msg", [(b"", "not a WAV"), (b"hello world, not audio", "not a WAV"),
                                         (b"RIFF\x04\x00\x00\x00WAVE", "no 'fmt '")])
def test_garbage_is_a_user_error_naming_the_file(tmp_path, payload, msg):
    path = tmp_path / "bad.wav"
    path.write_bytes(payload)
    with pytest.raises(UserError, match=msg) as err:
        read_wav(path)
    assert "bad.wav" in str(err.value)


def test_missing_file(tmp_path):
    with pytest.raises(UserError, match="cannot read"):
        read_wav(tmp_path / "nope.wav")
