"""Choose the next image of an entry: pure functions of the catalog, the position and a RNG.

``images`` are the usable images' relative paths in natural order (the catalog's
order). Positions name images by relative path, so files added or removed between
rotations never make an entry jump back to the start.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable, Sequence, Set
from typing import Any, Literal

Order = Literal["sequential", "shuffle", "random"]


@dataclasses.dataclass(frozen=True)
class Position:
    """Where an entry is: the image sent last and, for shuffle, those shown this cycle."""

    last_image: str | None = None
    shown_in_cycle: frozenset[str] = frozenset()


def next_image(
    order: Order,
    images: Sequence[str],
    position: Position,
    rng: random.Random,
    *,
    sort_key: Callable[[str], Any],
    exclude: Set[str] = frozenset(),
) -> str | None:
    """Return the image to send next, or None when no image can be sent.

    ``exclude`` holds images that must not be picked in this rotation (refused by
    the server, or tried already); ``sort_key`` is the natural sort key that put
    ``images`` in order, used to find "the one after the last" when the last
    image is gone.
    """
    candidates = [image for image in images if image not in exclude]
    if not candidates:
        return None
    if order == "sequential":
        return _after(candidates, position.last_image, sort_key)
    others = [image for image in candidates if image != position.last_image]
    if not others:  # a single image: sending it again is the only rotation there is
        return candidates[0]
    if order == "random":
        return rng.choice(others)
    fresh = [image for image in others if image not in position.shown_in_cycle]
    return rng.choice(fresh or others)


def advance(order: Order, images: Sequence[str], position: Position, sent: str) -> Position:
    """Return the position after ``sent`` went out successfully."""
    if order != "shuffle":
        return Position(last_image=sent)
    shown = {image for image in position.shown_in_cycle if image in images}
    if sent in shown:
        # Every other image had its turn already: ``sent`` opens a new cycle.
        shown = set()
    shown.add(sent)
    if set(images) <= shown:
        # The cycle is complete. The next one starts empty; ``last_image`` alone keeps
        # ``sent`` from coming straight back at the seam between cycles.
        shown = set()
    return Position(last_image=sent, shown_in_cycle=frozenset(shown))


def _after(images: Sequence[str], last: str | None, sort_key: Callable[[str], Any]) -> str:
    if last is None:
        return images[0]
    last_key = sort_key(last)
    for image in images:
        if sort_key(image) > last_key:
            return image
    return images[0]
