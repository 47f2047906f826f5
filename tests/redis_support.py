"""Redis faults for the tests: a write Redis applies whose reply never comes back."""

from __future__ import annotations

from typing import Any

import redis


class ReplyLost:
    """A pipeline whose ``execute`` (while ``lost[0]`` is False) is applied by Redis, then fails
    as if Redis went away before its reply came back; it sets ``lost[0]``."""

    def __init__(self, pipe: Any, lost: list[bool]) -> None:
        self._pipe, self._lost = pipe, lost

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pipe, name)

    def __len__(self) -> int:
        return len(self._pipe)

    def execute(self) -> Any:
        results = self._pipe.execute()
        if not self._lost[0]:
            self._lost[0] = True
            raise redis.ConnectionError("Connection closed by server.")
        return results


def lose_next_reply(client: Any, monkeypatch: Any) -> list[bool]:
    """Make ``client``'s next pipeline lose its reply; set the returned flag's item to False to
    lose the one after again."""
    real, lost = client.pipeline, [False]
    monkeypatch.setattr(client, "pipeline", lambda **kw: ReplyLost(real(**kw), lost))
    return lost
