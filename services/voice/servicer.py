"""VoiceService: protobuf in, separation calls, protobuf out. No signal processing here."""

from __future__ import annotations

import math
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
from remind.v1 import media_pb2, voice_pb2, voice_pb2_grpc

from services.shared import errors, wire
from services.shared.audio import RawPcm, to_pcm_s16le
from services.shared.engine_catalog import EngineCatalog
from services.shared.storage import ObjectStore
from services.shared.storage_grants import READ, WRITE, GrantChecker
from services.voice import audio
from services.voice.config import VoiceSettings
from services.voice.engines.base import ACCOMPANIMENT, VOCALS, VoiceEngine
from services.voice.intake import check_object_name, fetch_object, spool_chunks
from services.voice.separation import Progress, SeparationFacts, StemBlock, separate

STEM_NAMES = {voice_pb2.STEM_VOCALS: VOCALS, voice_pb2.STEM_ACCOMPANIMENT: ACCOMPANIMENT}
STEM_ENUMS = {name: enum for enum, name in STEM_NAMES.items()}
STEM_FORMAT = media_pb2.AudioFormat(
    encoding=media_pb2.AUDIO_ENCODING_PCM_S16LE,
    sample_rate_hz=audio.SAMPLE_RATE,
    channels=audio.CHANNELS,
)


def requested_stems(config: voice_pb2.SeparationConfig) -> tuple[str, ...]:
    wire.require(
        all(stem in STEM_NAMES for stem in config.stems),
        "Stems must be STEM_VOCALS or STEM_ACCOMPANIMENT.",
    )
    stems = {STEM_NAMES[stem] for stem in config.stems} or {VOCALS}
    return tuple(name for name in (VOCALS, ACCOMPANIMENT) if name in stems)


def first_seconds(config: voice_pb2.SeparationConfig) -> float | None:
    """How much of the recording to separate: None for all of it."""
    wire.require(
        math.isfinite(config.max_seconds) and config.max_seconds >= 0,
        f"max_seconds must be 0 (all) or a positive number of seconds, got {config.max_seconds}.",
    )
    return config.max_seconds or None


def raw_format(audio_format: media_pb2.AudioFormat) -> RawPcm | None:
    if audio_format.encoding != media_pb2.AUDIO_ENCODING_PCM_S16LE:
        return None
    return RawPcm(audio_format.sample_rate_hz, audio_format.channels)


def stored_key(prefix: str, stem: str) -> str:
    return f"{prefix.rstrip('/')}/{stem}.wav"


class _PcmChunker:
    """Turns stem blocks into PCM s16le chunks of a bounded size."""

    def __init__(self, chunk_bytes: int) -> None:
        self.chunk_bytes = chunk_bytes - chunk_bytes % 4
        self.pending: dict[str, bytearray] = {}

    def add(self, stem: str, pcm: bytes) -> Iterator[voice_pb2.SeparateVoiceResponse]:
        buffer = self.pending.setdefault(stem, bytearray())
        buffer += pcm
        while len(buffer) >= self.chunk_bytes:
            yield self._message(stem, bytes(buffer[: self.chunk_bytes]))
            del buffer[: self.chunk_bytes]

    def flush(self) -> Iterator[voice_pb2.SeparateVoiceResponse]:
        for stem, buffer in self.pending.items():
            if buffer:
                yield self._message(stem, bytes(buffer))
        self.pending.clear()

    @staticmethod
    def _message(stem: str, data: bytes) -> voice_pb2.SeparateVoiceResponse:
        return voice_pb2.SeparateVoiceResponse(
            chunk=voice_pb2.StemChunk(stem=STEM_ENUMS[stem], data=data, format=STEM_FORMAT)
        )


class VoiceServicer(voice_pb2_grpc.VoiceServiceServicer):
    def __init__(
        self,
        engines: EngineCatalog[VoiceEngine],
        settings: VoiceSettings,
        store: ObjectStore | None,
    ) -> None:
        self.engines = engines
        self.settings = settings
        self.store = store
        self.slots = threading.BoundedSemaphore(settings.max_concurrent_streams)
        self.grants = (
            GrantChecker(settings.grant_verify_key, "REMIND_VOICE_GRANT_VERIFY_KEY")
            if settings.grant_verify_key
            else None
        )

    def _require_store(self) -> ObjectStore:
        if self.store is None:
            raise errors.FailedPrecondition("This voice server has no object store configured.")
        return self.store

    def _granted_store(
        self,
        target: media_pb2.StorageObject,
        grant: media_pb2.StorageGrant,
        verb: media_pb2.StorageVerb,
    ) -> ObjectStore:
        """The store, once `grant` lets this call `verb` the object `target` names."""
        check_object_name(target.bucket, target.key)
        if self.grants is None:
            raise errors.PermissionDenied(
                "This voice server has no grant verify key (REMIND_VOICE_GRANT_VERIFY_KEY), "
                "so it accepts no stored objects: send the audio as chunks."
            )
        self.grants.check(target, grant, verb)
        return self._require_store()

    def _workdir(self) -> tempfile.TemporaryDirectory:
        # In the process's own scratch folder (services/shared/scratch.py).
        return tempfile.TemporaryDirectory(prefix="voice-")

    def ProbeAudio(
        self, request: voice_pb2.ProbeAudioRequest, context: grpc.ServicerContext
    ) -> voice_pb2.ProbeAudioResponse:
        with self._workdir() as work:
            path = Path(work) / "recording"
            if request.HasField("object"):
                store = self._granted_store(request.object, request.object_grant, READ)
                fetch_object(
                    store, request.object.bucket, request.object.key, path,
                    self.settings.max_input_bytes,
                )  # fmt: skip
            else:
                path.write_bytes(request.data)
            # Refusing here what SeparateVoice would refuse lets a caller reject a recording
            # before queuing any work for it.
            info = audio.probe_audio(path, self.settings.max_duration_seconds)
        return voice_pb2.ProbeAudioResponse(
            duration_seconds=info.duration_seconds,
            sample_rate_hz=info.sample_rate_hz,
            channels=info.channels,
            codec=info.codec,
        )

    def SeparateVoice(
        self,
        request_iterator: Iterator[voice_pb2.SeparateVoiceRequest],
        context: grpc.ServicerContext,
    ) -> Iterator[voice_pb2.SeparateVoiceResponse]:
        config, requests = wire.opened_stream(
            request_iterator,
            self.settings.request_idle_timeout_seconds,
            "SeparateVoice",
            "the audio chunks, unless it names a stored source,",
        )
        engine = self.engines.resolve(config.engine)
        stems = requested_stems(config)
        seconds = first_seconds(config)
        if not self.slots.acquire(blocking=False):
            raise errors.TooLarge(
                f"The voice service is separating {self.settings.max_concurrent_streams} "
                "recordings already: retry in a moment."
            )
        try:
            with self._workdir() as work:
                yield from self._separate(config, requests, engine, stems, seconds, Path(work))
        finally:
            self.slots.release()

    def _separate(
        self,
        config: voice_pb2.SeparationConfig,
        requests: Iterator[voice_pb2.SeparateVoiceRequest],
        engine: VoiceEngine,
        stems: tuple[str, ...],
        seconds: float | None,
        work: Path,
    ) -> Iterator[voice_pb2.SeparateVoiceResponse]:
        recording = work / "recording"
        raw = raw_format(config.format)
        if config.HasField("source"):
            store = self._granted_store(config.source, config.source_grant, READ)
            fetch_object(
                store, config.source.bucket, config.source.key, recording,
                self.settings.max_input_bytes,
            )  # fmt: skip
        else:
            spool_chunks(_audio_chunks(requests), recording, self.settings.max_input_bytes)
        checked = audio.checked_recording(
            recording, self.settings.max_duration_seconds, raw, seconds
        )
        targets = self._storage_targets(config, stems)
        events = separate(
            engine,
            lambda: checked.blocks(self.settings.decode_block_seconds),
            stems,
            checked.seconds,
            wiener=config.wiener_filter,
            overlap_frames=self.settings.segment_overlap_frames,
        )
        chunker = _PcmChunker(self.settings.output_chunk_bytes)
        writers = {stem: audio.StemWriter(work / f"{stem}.wav") for stem in targets}
        facts: SeparationFacts | None = None
        try:
            for event in events:
                if isinstance(event, Progress):
                    yield voice_pb2.SeparateVoiceResponse(
                        progress=voice_pb2.SeparationProgress(
                            seconds_done=event.seconds_done, seconds_total=event.seconds_total
                        )
                    )
                elif isinstance(event, StemBlock):
                    pcm = to_pcm_s16le(event.samples)
                    if event.stem in writers:
                        writers[event.stem].write(pcm)
                    yield from chunker.add(event.stem, pcm)
                else:
                    facts = event
            yield from chunker.flush()
        finally:
            for writer in writers.values():
                writer.close()
        assert facts is not None, "a separation always ends with its facts"
        stored = []
        for stem, (bucket, key) in targets.items():
            self._require_store().put_new_file(bucket, key, work / f"{stem}.wav", "audio/wav")
            stored.append(media_pb2.StorageObject(bucket=bucket, key=key))
        yield voice_pb2.SeparateVoiceResponse(
            summary=voice_pb2.SeparationSummary(
                engine=facts.engine,
                duration_seconds=facts.duration_seconds,
                stored=stored,
                voice_found=facts.voice_found,
                voiced_seconds=facts.voiced_seconds,
            )
        )

    def _storage_targets(
        self, config: voice_pb2.SeparationConfig, stems: tuple[str, ...]
    ) -> dict[str, tuple[str, str]]:
        """Where each stem is stored, checked before any work: nothing is ever overwritten."""
        if not config.HasField("store_prefix"):
            return {}
        prefix = config.store_prefix
        wire.require(
            bool(prefix.bucket and prefix.key), "store_prefix needs both a bucket and a key."
        )
        store = self._granted_store(prefix, config.store_prefix_grant, WRITE)
        targets = {stem: (prefix.bucket, stored_key(prefix.key, stem)) for stem in stems}
        for bucket, key in targets.values():
            check_object_name(bucket, key)
            if store.exists(bucket, key):
                raise errors.AlreadyExists(
                    f"{key} already exists and is never overwritten: choose a new prefix."
                )
        return targets

    def ListVoiceEngines(
        self, request: voice_pb2.ListVoiceEnginesRequest, context: grpc.ServicerContext
    ) -> voice_pb2.ListVoiceEnginesResponse:
        return wire.engine_list(self.engines, voice_pb2.ListVoiceEnginesResponse)


def _audio_chunks(requests: Iterator[voice_pb2.SeparateVoiceRequest]) -> Iterator[bytes]:
    for request in requests:
        wire.require(
            request.HasField("chunk"), "Only audio chunks may follow the config in SeparateVoice."
        )
        yield request.chunk.data
