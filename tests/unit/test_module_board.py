"""The module board reads Serve's status once, then refreshes it in the background: a route
let through never waits for a status read once there is one, and one refresh runs at a time.
A route refused waits for a read unless the state it is refused on is recent."""

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


class ScriptedBoard(ModuleBoard):
    """Serve's status read replaced by one that answers `status` for the ClipEmbedder."""

    def __init__(self, ttl_s: float) -> None:
        super().__init__("ai", {"image_search": True}, ttl_s=ttl_s)
        self.reads = 0
        self.status = "UPDATING"

    def _read_serve_status(self) -> dict[str, DeploymentState]:
        self.reads += 1
        time.sleep(0.02)  # a read takes a moment: concurrent callers overlap it
        return {
            "ClipEmbedder": DeploymentState(self.status, "", 1 if self.status == "HEALTHY" else 0),
            "VectorIndex": DeploymentState("HEALTHY", "", 1),
        }


def test_a_refusal_rests_on_a_recent_state_never_on_a_stale_one() -> None:
    """A Gateway replica that last read Serve's status while the model loaded, and has not
    been asked since, lets the first request through once the model is up: it reads again
    before refusing. Within `ttl_s` a refusal needs no read, and many refused at once share
    one read."""
    from core.errors import ModelNotReady
    from serve_app.modules import IMAGE_SEARCH

    board = ScriptedBoard(ttl_s=1.0)

    async def refused() -> bool:
        try:
            await board.require_ready(IMAGE_SEARCH)
        except ModelNotReady:
            return True
        return False

    async def main() -> list[tuple[list[bool], int]]:
        seen = []
        assert (await board.states())["image_search"].state == "loading"  # read 1
        seen.append(([await refused() for _ in range(5)], board.reads))  # recent: no read
        await asyncio.sleep(1.2)  # stale, still loading: 20 refusals share one read
        seen.append((list(await asyncio.gather(*(refused() for _ in range(20)))), board.reads))
        await asyncio.sleep(1.2)
        board.status = "HEALTHY"  # the model came up while nobody asked this replica
        seen.append(([await refused()], board.reads))
        return seen

    recent, stale_loading, came_up = asyncio.run(main())
    assert recent == ([True] * 5, 1)
    assert stale_loading == ([True] * 20, 2)
    assert came_up == ([False], 3)


def test_a_refusal_when_serve_cannot_be_read_is_the_cached_503() -> None:
    from core.errors import ModelNotReady
    from serve_app.modules import IMAGE_SEARCH

    class UnreadableBoard(ScriptedBoard):
        def _read_serve_status(self) -> dict[str, DeploymentState]:
            if self.reads:
                raise ConnectionError("the Serve controller is away")
            return super()._read_serve_status()

    board = UnreadableBoard(ttl_s=0.01)

    async def main() -> str:
        await board.states()  # loading
        await asyncio.sleep(0.05)
        try:
            await board.require_ready(IMAGE_SEARCH)
        except ModelNotReady as exc:
            return exc.message
        return "let through"

    assert "loading" in asyncio.run(main())
