"""The eye-disc measure: a drawn disc's radius from a guess ~20 px off, and the renderer's own geometry (a black
ring round a black eye is a disc 0.36 / 0.2 = 1.8x a bare eye's)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw

from trainer.data import synth
from trainer.data.synth import COLOUR_RGB, render_bird
from trainer.evaluate.eye_disc import measure_disc

# a bird whose only black is its eye (and eye ring, where a test names one)
BLACK_EYED = {"crown": "yellow", "nape": "yellow", "throat": "white", "back": "green", "wing": "green",
              "wingbar": "none", "breast": "buff", "belly": "white", "tail": "green", "bill_color": "orange",
              "bill_shape": "cone", "bill_length": "short", "eye": "black", "leg": "grey"}


@pytest.mark.parametrize("radius", [4, 6, 11])
def test_a_drawn_disc_is_measured_from_a_guess_beside_it(radius):
    img = Image.new("RGB", (256, 256), COLOUR_RGB["yellow"])
    d = ImageDraw.Draw(img)
    d.ellipse((130 - radius, 100 - radius, 130 + radius, 100 + radius), fill=COLOUR_RGB["black"])
    d.line((150, 60, 150, 140), fill=COLOUR_RGB["black"], width=3)  # a thin black stripe nearer the guess
    d.ellipse((120, 150, 180, 210), fill=COLOUR_RGB["brown"])  # dark, but not black
    got, round_ = measure_disc(np.asarray(img), (146.0, 88.0))
    assert abs(got - radius) <= 1.0 and round_


def test_a_black_cap_running_into_the_eye_is_not_a_round_disc():
    img = Image.new("RGB", (256, 256), COLOUR_RGB["yellow"])
    d = ImageDraw.Draw(img)
    d.ellipse((124, 94, 136, 106), fill=COLOUR_RGB["black"])  # the eye, radius 6
    d.pieslice((90, 60, 170, 140), 180, 360, fill=COLOUR_RGB["black"])  # a black cap over it, down to its middle
    radius, round_ = measure_disc(np.asarray(img), (130.0, 100.0))
    assert not round_ and radius > 6


def test_no_black_near_the_guess_is_radius_zero():
    img = Image.new("RGB", (256, 256), COLOUR_RGB["blue"])
    ImageDraw.Draw(img).ellipse((10, 10, 30, 30), fill=COLOUR_RGB["black"])
    assert measure_disc(np.asarray(img), (200.0, 200.0)) == (0.0, False)


def test_a_black_ring_round_a_black_eye_measures_as_the_ring():
    """The same bird drawn with a black ring and with a white one (same seed, so same geometry): the ring's pixels
    are where the two differ, and their centre is the eye's. Black ring: the ring's disc; white: the bare eye."""
    ratios = []
    for seed in range(6):
        black = np.asarray(render_bird({**BLACK_EYED, "eyering": "black"}, 256, np.random.default_rng(seed)))
        white = np.asarray(render_bird({**BLACK_EYED, "eyering": "white"}, 256, np.random.default_rng(seed)))
        ys, xs = np.nonzero((black != white).any(-1))
        centre = (float(xs.mean()), float(ys.mean()))
        (ring, ring_round), (eye, eye_round) = measure_disc(black, centre), measure_disc(white, centre)
        assert ring_round and eye_round
        assert ring >= 7.5  # 0.36 x 0.52 x (0.17-0.21) x 256 = 8.1-10.1 px
        ratios.append(ring / eye)
    assert 1.55 <= float(np.median(ratios)) <= 2.05


def test_a_black_ring_round_an_eye_of_another_colour_measures_as_the_ring():
    """The eye inside a black ring need not be black (the challenge caption names only the ring): what the ring
    encloses counts, so a black ring round a yellow eye measures as round a black one, and without it only the
    pupil is black."""
    def draw(eye: str, ring: str, seed: int) -> np.ndarray:
        return np.asarray(render_bird({**BLACK_EYED, "eye": eye, "eyering": ring}, 256, np.random.default_rng(seed)))

    for seed in range(4):
        black_eye, yellow_eye = draw("black", "black", seed), draw("yellow", "black", seed)
        bare = draw("yellow", "white", seed)
        ys, xs = np.nonzero((black_eye != yellow_eye).any(-1))  # the yellow eye: the centre of both
        centre = (float(xs.mean()), float(ys.mean()))
        (ring, ring_round), (ringed_yellow, yellow_round) = measure_disc(black_eye, centre), measure_disc(yellow_eye, centre)
        assert ring_round and yellow_round and abs(ringed_yellow - ring) <= 1.0
        assert measure_disc(bare, centre)[0] < 0.5 * ring  # the pupil alone


def test_a_thin_black_rim_measures_as_an_eye_not_a_ring():
    """What `render_set(thin_rims=)` draws for readers to call 'none': a black rim a third of the ring's width is
    nearer a bare eye than a ring round it."""
    def draw(ring: float, seed: int) -> np.ndarray:
        return np.asarray(synth._render({**BLACK_EYED, "eyering": "black"}, 256, np.random.default_rng(seed), ring)[0])

    for seed in range(4):
        full, thin = draw(synth.RING_RADIUS, seed), draw(synth.THIN_RIM, seed)
        ys, xs = np.nonzero((full != thin).any(-1))  # between the thin rim and the full ring
        centre = (float(xs.mean()), float(ys.mean()))
        ring, eye = measure_disc(full, centre)[0], measure_disc(thin, centre)[0]
        ring_px = ring / synth.RING_RADIUS  # the head radius in pixels, from the full ring
        assert abs(eye - synth.EYE_RADIUS * ring_px) < abs(eye - ring)
