"""A small client for VoiceService, for the tests and benchmarks/voice.py.

Stems come back as float32 (n, channels) arrays, read as each chunk's `format` declares."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import grpc
import numpy as np
from remind.v1 import media_pb2, voice_pb2, voice_pb2_grpc

from services.shared.audio import from_pcm_s16le

CHUNK_BYTES = 1024 * 1024
STEM_NAMES = {voice_pb2.STEM_VOCALS: "vocals", voice_pb2.STEM_ACCOMPANIMENT: "accompaniment"}


@dataclass
class SeparationResult:
    stems: dict[str, np.ndarray]  # float32 (n, 2) at 44.1 kHz
    summary: voice_pb2.SeparationSummary
    progress: list[voice_pb2.SeparationProgress] = field(default_factory=list)
    formats: dict[str, media_pb2.AudioFormat] = field(default_factory=dict)
    pcm: dict[str, bytes] = field(default_factory=dict)  # each stem's chunks, joined


class VoiceClient:
    def __init__(self, address: str) -> None:
        self.channel = grpc.insecure_channel(address)
        self.stub = voice_pb2_grpc.VoiceServiceStub(self.channel)

    def __enter__(self) -> VoiceClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.channel.close()

    def separate(
        self,
        recording: bytes = b"",
        engine: str = "auto",
        stems: tuple[voice_pb2.Stem, ...] = (voice_pb2.STEM_VOCALS,),
        source: media_pb2.StorageObject | None = None,
        store_prefix: media_pb2.StorageObject | None = None,
        source_grant: media_pb2.StorageGrant | None = None,
        store_prefix_grant: media_pb2.StorageGrant | None = None,
        audio_format: media_pb2.AudioFormat | None = None,
        wiener_filter: bool = False,
        max_seconds: float = 0.0,
        timeout: float = 300.0,
    ) -> SeparationResult:
        config = voice_pb2.SeparationConfig(
            engine=engine,
            stems=stems,
            source=source,
            store_prefix=store_prefix,
            source_grant=source_grant,
            store_prefix_grant=store_prefix_grant,
            format=audio_format,
            wiener_filter=wiener_filter,
            max_seconds=max_seconds,
        )

        def requests() -> Iterator[voice_pb2.SeparateVoiceRequest]:
            yield voice_pb2.SeparateVoiceRequest(config=config)
            if source is None:
                for start in range(0, len(recording), CHUNK_BYTES):
                    chunk = media_pb2.AudioChunk(data=recording[start : start + CHUNK_BYTES])
                    yield voice_pb2.SeparateVoiceRequest(chunk=chunk)

        return self.collect(self.stub.SeparateVoice(requests(), timeout=timeout))

    @staticmethod
    def collect(responses: Iterator[voice_pb2.SeparateVoiceResponse]) -> SeparationResult:
        pcm: dict[str, bytearray] = {}
        formats: dict[str, media_pb2.AudioFormat] = {}
        progress = []
        summary = voice_pb2.SeparationSummary()
        for response in responses:
            kind = response.WhichOneof("payload")
            if kind == "chunk":
                stem = STEM_NAMES[response.chunk.stem]
                assert formats.setdefault(stem, response.chunk.format) == response.chunk.format
                pcm.setdefault(stem, bytearray()).extend(response.chunk.data)
            elif kind == "progress":
                progress.append(response.progress)
            elif kind == "summary":
                summary = response.summary
        joined = {name: bytes(data) for name, data in pcm.items()}
        stems = {
            name: from_pcm_s16le(data, formats[name].channels) for name, data in joined.items()
        }
        return SeparationResult(stems, summary, progress, formats, joined)

    def probe(self, recording: bytes) -> voice_pb2.ProbeAudioResponse:
        return self.stub.ProbeAudio(voice_pb2.ProbeAudioRequest(data=recording), timeout=60)

    def engines(self) -> voice_pb2.ListVoiceEnginesResponse:
        return self.stub.ListVoiceEngines(voice_pb2.ListVoiceEnginesRequest(), timeout=30)
