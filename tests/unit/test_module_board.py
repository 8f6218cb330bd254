"""The module board reads Serve's status once, then refreshes it in the background: a route
never waits for a status read once there is one, and one refresh runs at a time."""

from __future__ import annotations

import asyncio
import threading
import time

from serve_app.modules import DeploymentState, ModuleBoard


class SlowBoard(ModuleBoard):
    """Serve's status read replaced by a slow one that counts its calls."""

    def __init__(self) -> None:
        super().__init__("ai", {"image_search": True}, ttl_s=0.05)
        self.reads = 0
        self.release = threading.Event()
        self.status = "HEALTHY"

    def _read_serve_status(self) -> dict[str, DeploymentState]:
        self.reads += 1
        if self.reads > 1:
            self.release.wait(10)
        return {
            "ClipEmbedder": DeploymentState(self.status, ""),
            "VectorIndex": DeploymentState("HEALTHY", ""),
        }


def test_a_stale_board_answers_at_once_and_refreshes_once_in_the_background() -> None:
    board = SlowBoard()

    async def main() -> tuple[str, str, float, int, str]:
        first = (await board.states())["image_search"].state  # the first read waits
        await asyncio.sleep(0.1)  # stale now
        board.status = "UNHEALTHY"
        started = time.perf_counter()
        answers = [await board.states() for _ in range(20)]  # none waits for the slow read
        waited = time.perf_counter() - started
        stale = answers[-1]["image_search"].state
        board.release.set()
        while board.reads < 2 or board._refresh is None or not board._refresh.done():
            await asyncio.sleep(0.01)
        fresh = (await board.states())["image_search"].state
        return first, stale, waited, board.reads, fresh

    first, stale, waited, reads, fresh = asyncio.run(main())
    assert (first, stale) == ("ready", "ready")
    assert waited < 5  # the slow read holds for up to 10 s: nobody waited for it
    assert reads == 2  # twenty stale answers, one refresh
    assert fresh != "ready"


def test_a_rolling_update_with_running_replicas_is_ready_and_a_first_start_is_loading() -> None:
    """`serve deploy` of a changed config marks the deployment UPDATING; the old replicas
    answer until the new ones have loaded, so routes must not refuse meanwhile."""
    from serve_app.modules import IMAGE_SEARCH, module_state

    def state(clip: DeploymentState) -> str:
        deployments = {"ClipEmbedder": clip, "VectorIndex": DeploymentState("HEALTHY", "", 1)}
        return module_state(IMAGE_SEARCH, True, deployments).state

    assert state(DeploymentState("UPDATING", "", running=1)) == "ready"
    assert state(DeploymentState("UPDATING", "", running=0)) == "loading"
    assert state(DeploymentState("HEALTHY", "", running=1)) == "ready"
    assert state(DeploymentState("DEPLOY_FAILED", "boom", running=1)) == "failed"
