"""Separates one recording in this process, like the official `spleeter separate`:

    python -m services.voice.separate_file INPUT -o OUTDIR [--engine spleeter] [--mwf]

writes `OUTDIR/<INPUT's name without extension>/vocals.wav` and `accompaniment.wav` (16-bit,
44.1 kHz stereo), the official command's default layout ("{filename}/{instrument}.{codec}").
It is the whole-process counterpart of `spleeter separate` for benchmarks/voice.py, and a way
to get stems from a file without running the service.

Data path: ffprobe reads the header (channels, limits) -> ffmpeg decodes in blocks -> the
service's own separation (separation.py, the same engines and settings, REMIND_VOICE_*) ->
PCM s16le appended to each WAV as it comes. Unlike the service, the file is decoded once: the
service's decode-to-nowhere check is skipped, so a damaged file fails when the decode reaches
the damage rather than before any work.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from services.shared.audio import to_pcm_s16le
from services.shared.errors import RemindError
from services.voice import audio
from services.voice.config import VoiceSettings
from services.voice.engines.base import STEMS
from services.voice.engines.registry import engine_factories
from services.voice.separation import SeparationFacts, StemBlock, separate


def separate_file(
    recording: Path, out_dir: Path, engine_name: str, settings: VoiceSettings, wiener: bool
) -> tuple[dict[str, Path], SeparationFacts]:
    """Separates `recording` into `out_dir/<its stem>/<stem>.wav`; returns the paths and facts."""
    factories = engine_factories(settings)
    if engine_name not in factories:
        raise RemindError(f"unknown engine {engine_name!r}: choose one of {', '.join(factories)}")
    info = audio.probe_audio(recording, settings.max_duration_seconds)
    engine = factories[engine_name]()
    engine.load()
    folder = out_dir / recording.stem
    folder.mkdir(parents=True, exist_ok=True)
    paths = {stem: folder / f"{stem}.wav" for stem in STEMS}
    writers = {stem: audio.StemWriter(path) for stem, path in paths.items()}
    facts = None
    try:
        events = separate(
            engine,
            lambda: audio.iter_audio(recording, settings.decode_block_seconds, info.channels),
            STEMS,
            info.duration_seconds,
            wiener=wiener,
            overlap_frames=settings.segment_overlap_frames,
        )
        for event in events:
            if isinstance(event, StemBlock):
                writers[event.stem].write(to_pcm_s16le(event.samples))
            elif isinstance(event, SeparationFacts):
                facts = event
    finally:
        for writer in writers.values():
            writer.close()
        engine.close()
    assert facts is not None, "a separation always ends with its facts"
    return paths, facts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m services.voice.separate_file",
        description="Separate the voice from a recording into vocals.wav and accompaniment.wav.",
    )
    parser.add_argument("input", type=Path, help="any recording ffmpeg reads")
    parser.add_argument("-o", "--output", type=Path, default=Path("separated_audio"),
                        help="output folder (default: separated_audio, as spleeter)")  # fmt: skip
    parser.add_argument("--engine", default="spleeter", help="spleeter (default) or spectral")
    parser.add_argument("--mwf", action="store_true", help="multichannel Wiener filter")
    arguments = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        paths, facts = separate_file(
            arguments.input, arguments.output, arguments.engine, VoiceSettings.load(),
            arguments.mwf,
        )  # fmt: skip
    except (RemindError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    for path in paths.values():
        print(path)
    print(f"{facts.engine}: {facts.duration_seconds:.1f} s, voice found: {facts.voice_found}",
          file=sys.stderr)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
