"""The orchestrator's side of the faceswap service: domain calls over gRPC."""

from collections.abc import Iterator

import grpc
from remind.v1 import faceswap_pb2, faceswap_pb2_grpc, media_pb2

from services.orchestrator.frame_pipeline import FRAME_FORMAT
from services.shared.grpc_status import error_from_rpc
from services.shared.server import message_options
from services.shared.tracing import trace_metadata

PREPARE_TIMEOUT_SECONDS = 20.0


class FaceSwapClient:
    def __init__(self, address: str, max_message_bytes: int, timeout_seconds: float) -> None:
        # With a `dns:///` address of a headless Service, every replica gets streams: HTTP/2
        # connections are long-lived, so balancing happens per call on the client.
        self.channel = grpc.insecure_channel(
            address,
            options=[
                *message_options(max_message_bytes),
                ("grpc.lb_policy_name", "round_robin"),
                # A restarted service is found again within a second or two.
                ("grpc.initial_reconnect_backoff_ms", 500),
                ("grpc.max_reconnect_backoff_ms", 2000),
            ],
        )
        self.stub = faceswap_pb2_grpc.FaceSwapServiceStub(self.channel)
        self.timeout = timeout_seconds

    def prepare_identity(self, photo: bytes, engine: str) -> faceswap_pb2.FaceIdentity:
        request = faceswap_pb2.PrepareIdentityRequest(
            photo=media_pb2.EncodedImage(data=photo), engine=engine
        )
        try:
            # Waits for a (re)starting service to connect rather than failing at once.
            return self.stub.PrepareIdentity(
                request,
                timeout=PREPARE_TIMEOUT_SECONDS,
                wait_for_ready=True,
                metadata=trace_metadata(),
            ).identity
        except grpc.RpcError as error:
            raise error_from_rpc(error, "The faceswap service") from None

    def swap_faces(
        self, identity: faceswap_pb2.FaceIdentity, frames: Iterator[media_pb2.Frame]
    ) -> Iterator[faceswap_pb2.SwapFacesResponse]:
        """Streams frames through the service; responses arrive in order, one per frame.

        Frames are sent while earlier ones are still being swapped: the request iterator is
        drained by gRPC's own thread, with HTTP/2 flow control as the back-pressure. Closing
        the returned generator (e.g. on cancel) cancels the call.
        """

        def requests() -> Iterator[faceswap_pb2.SwapFacesRequest]:
            yield faceswap_pb2.SwapFacesRequest(
                config=faceswap_pb2.SwapConfig(identity=identity, output_format=FRAME_FORMAT)
            )
            for frame in frames:
                yield faceswap_pb2.SwapFacesRequest(frame=frame)

        call = self.stub.SwapFaces(requests(), timeout=self.timeout, metadata=trace_metadata())
        try:
            yield from call
        except grpc.RpcError as error:
            raise error_from_rpc(error, "The faceswap service") from None
        finally:
            if call.is_active():
                call.cancel()

    def close(self) -> None:
        self.channel.close()
