"""Voice audio without a server: channels as official Spleeter reads them, 16-bit samples as
ffmpeg converts them, and the file command (`python -m services.voice.separate_file`).
Real ffmpeg and espeak-ng throughout."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile

from services.samples import make_mix, wav_bytes
from services.shared.audio import RawPcm, from_pcm_s16le, to_int16, to_pcm_s16le
from services.shared.errors import InvalidInput
from services.voice import audio


def _decoded(path: Path, channels: int) -> np.ndarray:
    return np.concatenate(list(audio.iter_audio(path, 1.0, channels)))


def test_a_mono_recording_is_duplicated_at_its_own_level(tmp_path):
    voice = make_mix("en-us", 3.0).voice[:, 0]
    mono, stereo = tmp_path / "mono.wav", tmp_path / "dual.wav"
    mono.write_bytes(wav_bytes(voice))
    stereo.write_bytes(wav_bytes(np.stack([voice, voice], axis=1)))
    assert audio.probe_audio(mono, 60).channels == 1

    from_mono, from_stereo = _decoded(mono, 1), _decoded(stereo, 2)
    assert np.array_equal(from_mono, from_stereo)
    # The very samples in the file, not ffmpeg's -3 dB pan of mono to stereo.
    expected = to_int16(voice).astype(np.float32) / 32768
    assert np.array_equal(from_mono[:, 0], expected) and np.array_equal(from_mono[:, 1], expected)
    level = 20 * np.log10(np.sqrt(np.mean(from_mono**2)) / np.sqrt(np.mean(expected**2)))
    assert abs(level) < 0.01


def test_more_than_two_channels_are_downmixed_to_stereo(tmp_path):
    surround = tmp_path / "surround.wav"
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "sine=f=440:d=1",
                    "-af", "pan=5.1|c2=c0", str(surround)], check=True)  # fmt: skip
    decoded = _decoded(surround, 6)
    assert decoded.shape == (44100, 2)
    # The tone is in the centre channel only, which the first two channels would miss.
    assert np.sqrt(np.mean(decoded**2)) > 0.03


def test_16_bit_samples_are_converted_exactly_as_ffmpeg_converts_them():
    rng = np.random.default_rng(7)
    halves = (np.arange(-40, 40) + 0.5) / 32768  # ties: rounded to even, as lrintf
    samples = np.concatenate([rng.uniform(-1.2, 1.2, 20_000), halves, [1.0, -1.0, 0.0]])
    samples = samples.astype(np.float32)
    converted = subprocess.run(
        ["ffmpeg", "-v", "error", "-f", "f32le", "-ar", "44100", "-ac", "1", "-i", "pipe:0",
         "-f", "s16le", "pipe:1"],
        input=samples.tobytes(), capture_output=True, check=True,
    ).stdout  # fmt: skip
    assert to_pcm_s16le(samples[:, None]) == converted
    # And back: 16-bit values survive the round trip exactly, 32768 both ways.
    grid = np.arange(-32768, 32768, 7, dtype=np.int16)
    floats = from_pcm_s16le(grid.tobytes(), 1)
    assert floats.min() == -1.0 and np.array_equal(to_int16(floats)[:, 0], grid)


def test_the_file_command_writes_both_stems_like_the_official_command(tmp_path):
    mix = make_mix("en-us", 6.0)
    recording = tmp_path / "my voice.wav"
    recording.write_bytes(wav_bytes(mix.mixture))
    result = subprocess.run(
        [sys.executable, "-m", "services.voice.separate_file", str(recording),
         "-o", str(tmp_path / "out"), "--engine", "spleeter"],
        capture_output=True, text=True, check=False,
        env={**os.environ, "REMIND_VOICE_CACHE_DIR": str(tmp_path / "cache")},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    folder = tmp_path / "out" / "my voice"
    stems = {}
    for stem in ("vocals", "accompaniment"):
        info = soundfile.info(folder / f"{stem}.wav")
        assert (info.samplerate, info.channels, info.subtype) == (44100, 2, "PCM_16")
        stems[stem], _ = soundfile.read(folder / f"{stem}.wav", dtype="float32")
        assert len(stems[stem]) == len(mix.mixture)
    assert "voice found: True" in result.stderr
    # Below Spleeter's 11 kHz cut the stems add up to the recording.
    total = np.fft.rfft((stems["vocals"] + stems["accompaniment"])[:, 0])
    original = np.fft.rfft(mix.mixture[:, 0])
    band = slice(100, int(len(total) * 10_000 / 22_050))
    assert np.abs(total[band] - original[band]).max() < 0.01 * np.abs(original[band]).max()


def test_the_file_command_refuses_what_is_not_a_recording(tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("not a recording")
    result = subprocess.run(
        [sys.executable, "-m", "services.voice.separate_file", str(notes), "-o", str(tmp_path)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 1
    assert "not a readable audio recording" in result.stderr


@pytest.mark.parametrize(
    ("data", "declared", "words"),
    [(b"\x00\x01" * 4411, (44100, 3), "not a whole number of frames"),
     (b"\x00\x01" * 4410, (1, 2), "PCM needs its sample rate"),
     (wav_bytes(np.zeros(4410, np.float32)), (44100, 1), "starts like a WAV file")],
)  # fmt: skip
def test_raw_pcm_that_cannot_match_its_declaration_is_refused(tmp_path, data, declared, words):
    path = tmp_path / "pcm"
    path.write_bytes(data)
    with pytest.raises(InvalidInput, match=words):
        audio.probe_audio(path, 60, RawPcm(*declared))
