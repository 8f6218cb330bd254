"""moto's S3 server on a fixed loopback port that a test can stop and start again."""

from __future__ import annotations

from moto.server import ThreadedMotoServer

from tests.support.ports import free_port


class RestartableS3:
    """An S3 server whose outage a test controls; moto keeps its state in this process, so
    buckets and objects survive a restart."""

    def __init__(self) -> None:
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._server: ThreadedMotoServer | None = None

    def start(self) -> None:
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self._server.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None
