"""Tests for rotator.planner: sequential, shuffle and random orders, as pure functions."""

from __future__ import annotations

import itertools
import random
from collections.abc import Sequence

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rotator.catalog import natural_key
from rotator.planner import Order, Position, advance, next_image

ORDERS: list[Order] = ["sequential", "shuffle", "random"]


def ordered(names: Sequence[str]) -> list[str]:
    """Return ``names`` in the catalog's natural order."""
    return sorted(set(names), key=natural_key)


def pick(
    order: Order,
    images: Sequence[str],
    position: Position,
    rng: random.Random,
    exclude: frozenset[str] = frozenset(),
) -> str | None:
    """Call next_image with the natural sort key."""
    return next_image(order, images, position, rng, sort_key=natural_key, exclude=exclude)


def rotate(
    order: Order, images: Sequence[str], count: int, rng: random.Random, position: Position
) -> tuple[list[str], Position]:
    """Send ``count`` images in a row; return them and the final position."""
    sent: list[str] = []
    for _ in range(count):
        image = pick(order, images, position, rng)
        assert image is not None
        position = advance(order, images, position, image)
        sent.append(image)
    return sent, position


# -- sequential --------------------------------------------------------------------------


def test_sequential_follows_natural_order_and_wraps() -> None:
    """Sequential goes img1, img2, img10 (not img10 before img2) and wraps to the start."""
    images = ordered(["img10.png", "img2.png", "img1.png", "b/img3.png", "a/img20.png"])
    assert images == ["a/img20.png", "b/img3.png", "img1.png", "img2.png", "img10.png"]
    sent, _ = rotate("sequential", images, 12, random.Random(0), Position())
    assert sent == images + images + images[:2]


def test_sequential_continues_after_a_deleted_last_image() -> None:
    """When the last image is gone, the next is the one after it in natural order."""
    images = ordered(["img1.png", "img3.png", "img4.png"])  # img2.png was deleted
    assert pick("sequential", images, Position(last_image="img2.png"), random.Random(0)) == (
        "img3.png"
    )


def test_sequential_wraps_only_when_the_deleted_last_image_was_the_last() -> None:
    """A deleted last image at the end of the order wraps to the first image."""
    images = ordered(["img1.png", "img2.png", "img3.png"])  # img9.png was deleted
    assert pick("sequential", images, Position(last_image="img9.png"), random.Random(0)) == (
        "img1.png"
    )


def test_sequential_takes_images_added_before_and_after() -> None:
    """Images added before the last one wait for the wrap; one added after comes next."""
    images = ordered(["img0.png", "img3.png", "img5.png", "img6.png", "img7.png"])
    sent, _ = rotate("sequential", images, 5, random.Random(0), Position(last_image="img5.png"))
    assert sent == ["img6.png", "img7.png", "img0.png", "img3.png", "img5.png"]


@given(
    names=st.sets(st.integers(0, 200), min_size=1, max_size=30),
    last=st.integers(0, 200),
    folder=st.sampled_from(["", "sub/", "Sub/"]),
)
def test_sequential_picks_the_first_image_after_the_last(
    names: set[int], last: int, folder: str
) -> None:
    """Whatever was added or removed, the next image is the first one after the last, or wraps."""
    images = ordered([f"{folder}photo{n}.jpg" for n in names])
    last_name = f"{folder}photo{last}.jpg"
    later = [n for n in sorted(names) if n > last]
    expected = f"{folder}photo{later[0]}.jpg" if later else images[0]
    assert pick("sequential", images, Position(last_image=last_name), random.Random(0)) == (
        expected
    )


def test_sequential_skips_excluded_images() -> None:
    """Excluded images (refused or tried in this rotation) are stepped over."""
    images = ordered(["1.png", "2.png", "3.png", "4.png"])
    position = Position(last_image="1.png")
    rng = random.Random(0)
    assert pick("sequential", images, position, rng, frozenset({"2.png"})) == "3.png"
    assert pick("sequential", images, position, rng, frozenset({"2.png", "3.png", "4.png"})) == (
        "1.png"
    )


@pytest.mark.parametrize("order", ORDERS)
def test_everything_excluded_gives_none(order: Order) -> None:
    """When every image is excluded there is nothing to send."""
    images = ["a.png", "b.png"]
    assert pick(order, images, Position(), random.Random(0), frozenset(images)) is None


@pytest.mark.parametrize("order", ORDERS)
def test_no_images_gives_none(order: Order) -> None:
    """An empty folder gives no image, from any position."""
    rng = random.Random(0)
    assert pick(order, [], Position(), rng) is None
    assert pick(order, [], Position(last_image="x.png", shown_in_cycle=frozenset({"x"})), rng) is (
        None
    )


@pytest.mark.parametrize("order", ORDERS)
def test_a_single_image_is_picked_every_time(order: Order) -> None:
    """With one image, that image is sent on every rotation."""
    sent, _ = rotate(order, ["only.png"], 5, random.Random(3), Position())
    assert sent == ["only.png"] * 5


# -- shuffle -----------------------------------------------------------------------------


@given(
    count=st.integers(2, 9),
    cycles=st.integers(2, 5),
    seed=st.integers(0, 2**32),
)
def test_shuffle_cycles_show_every_image_once_without_repeats(
    count: int, cycles: int, seed: int
) -> None:
    """Each cycle of len(images) picks is a permutation, and no image repeats across a seam."""
    images = ordered([f"img{n}.png" for n in range(count)])
    sent, _ = rotate("shuffle", images, count * cycles, random.Random(seed), Position())
    for start in range(0, len(sent), count):
        assert sorted(sent[start : start + count], key=natural_key) == images
    assert all(a != b for a, b in itertools.pairwise(sent))


def test_shuffle_is_not_always_the_same_order() -> None:
    """Shuffle really shuffles: different cycles come out in different orders."""
    images = [f"img{n}.png" for n in range(6)]
    sent, _ = rotate("shuffle", images, 60, random.Random(5), Position())
    assert len({tuple(sent[i : i + 6]) for i in range(0, 60, 6)}) > 3


@given(seed=st.integers(0, 2**32), shown_before=st.integers(1, 4))
def test_shuffle_image_added_mid_cycle_joins_the_current_cycle(
    seed: int, shown_before: int
) -> None:
    """An image added during a cycle is shown before the cycle ends, with the others unseen."""
    rng = random.Random(seed)
    images = [f"img{n}.png" for n in range(5)]
    first, position = rotate("shuffle", images, shown_before, rng, Position())
    grown = ordered([*images, "img2b.png"])
    rest = len(grown) - shown_before
    second, position = rotate("shuffle", grown, rest, rng, position)
    assert set(first) | set(second) == set(grown)
    assert len(first + second) == len(set(first + second))
    assert position.shown_in_cycle == frozenset()  # the cycle ended with the last unseen one


@given(seed=st.integers(0, 2**32))
def test_shuffle_image_removed_mid_cycle_leaves_the_rest_of_the_cycle(seed: int) -> None:
    """An image deleted during a cycle is dropped; the cycle ends with the remaining unseen."""
    rng = random.Random(seed)
    images = [f"img{n}.png" for n in range(6)]
    first, position = rotate("shuffle", images, 2, rng, Position())
    unseen = [image for image in images if image not in first]
    smaller = [image for image in images if image != unseen[0]]
    second, position = rotate("shuffle", smaller, 3, rng, position)
    assert sorted(second) == sorted(unseen[1:])
    assert position.shown_in_cycle == frozenset()


def test_shuffle_position_forgets_shown_images_that_were_deleted() -> None:
    """advance drops deleted images from shown_in_cycle, so the cycle can still complete."""
    position = Position(last_image="b.png", shown_in_cycle=frozenset({"a.png", "b.png"}))
    after = advance("shuffle", ["b.png", "c.png", "d.png"], position, "c.png")
    assert after == Position(last_image="c.png", shown_in_cycle=frozenset({"b.png", "c.png"}))


# -- random ------------------------------------------------------------------------------


@given(count=st.integers(2, 8), seed=st.integers(0, 2**32))
def test_random_never_repeats_the_last_image(count: int, seed: int) -> None:
    """Random order never sends the same image twice in a row when there are two or more."""
    images = [f"img{n}.png" for n in range(count)]
    sent, _ = rotate("random", images, 50, random.Random(seed), Position())
    assert all(a != b for a, b in itertools.pairwise(sent))


def test_random_reaches_every_image() -> None:
    """Random order picks every image at least once in 200 picks (seeded)."""
    images = [f"img{n}.png" for n in range(10)]
    sent, _ = rotate("random", images, 200, random.Random(11), Position())
    assert set(sent) == set(images)


def test_random_with_two_images_alternates() -> None:
    """With two images, not repeating means alternating."""
    sent, _ = rotate("random", ["a.png", "b.png"], 6, random.Random(2), Position())
    assert sent in (["a.png", "b.png"] * 3, ["b.png", "a.png"] * 3)


@pytest.mark.parametrize("order", ["random", "shuffle"])
def test_random_orders_send_the_last_image_when_it_is_the_only_candidate(
    order: Order,
) -> None:
    """A single remaining candidate is still sent, even if it was the last image."""
    images = ["a.png", "b.png", "c.png"]
    position = Position(last_image="a.png")
    rng = random.Random(0)
    assert pick(order, images, position, rng, frozenset({"b.png", "c.png"})) == "a.png"
