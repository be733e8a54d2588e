import cv2
import numpy as np
import pytest

from anomaly_spotter.config import ANOMALY_MASKS as MASK_KINDS
from anomaly_spotter.config import ANOMALY_SOURCES as SOURCE_KINDS
from anomaly_spotter.config import AnomaliesConfig, parse_params
from anomaly_spotter.errors import ConfigError
from anomaly_spotter.training.pasted_anomalies import (
    AnomalyGenerator,
    SyntheticAnomaly,
    foreground_mask,
    perlin_noise,
)

SIZE = 64
DISC_CENTRE, DISC_RADIUS = (SIZE // 2, SIZE // 2), 20
# The blend changes every masked value by at least opacity_min * MIN_SOURCE_DIFFERENCE on
# average (0.15 * 24 = 3.6) minus half a grey level of rounding.
MIN_MEAN_CHANGE = 3.0
SETTINGS = {"probability", "mask", "sources", "opacity_min", "opacity_max", "foreground_only"}  # params.anomalies


def generator_with(**arguments) -> AnomalyGenerator:
    """A generator from params.anomalies' defaults with ``arguments`` changed (settings or mask-shape constants)."""
    settings = AnomaliesConfig(**{k: v for k, v in arguments.items() if k in SETTINGS})
    return AnomalyGenerator(settings, **{k: v for k, v in arguments.items() if k not in SETTINGS})


def disc_image(brightness: int = 200) -> np.ndarray:
    """An object image: a bright disc on a dark, plain background, uint8 (64, 64, 3)."""
    image = np.full((SIZE, SIZE, 3), 20, np.uint8)
    cv2.circle(image, DISC_CENTRE, DISC_RADIUS, (brightness, brightness - 20, brightness - 40), thickness=-1)
    return image


def disc_support(extra_radius: int = 0) -> np.ndarray:
    canvas = np.zeros((SIZE, SIZE), np.uint8)
    cv2.circle(canvas, DISC_CENTRE, DISC_RADIUS + extra_radius, 1, thickness=-1)
    return canvas.astype(bool)


def noise_texture(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(SIZE, SIZE, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def images() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """name -> (image, source pool that includes the image)."""
    disc = disc_image()
    texture = noise_texture()
    return {
        "object": (disc, np.stack([disc, disc_image(170), disc_image(230)])),
        "texture": (texture, np.stack([texture, noise_texture(1), noise_texture(2)])),
    }


def assert_valid(anomaly: SyntheticAnomaly, image: np.ndarray, generator: AnomalyGenerator) -> None:
    assert anomaly.image.shape == image.shape and anomaly.image.dtype == np.uint8
    assert anomaly.mask.shape == image.shape[:2] and anomaly.mask.dtype == np.float32
    assert set(np.unique(anomaly.mask)) <= {0.0, 1.0}, "mask is not binary"
    inside = anomaly.mask == 1.0
    assert inside.any(), "a requested anomaly is empty"
    area = inside.mean()
    assert generator.min_area_fraction <= area <= generator.max_area_fraction, f"area fraction {area}"
    assert np.array_equal(anomaly.image[~inside], image[~inside]), "pixels outside the mask changed"
    change = np.abs(anomaly.image.astype(np.int16) - image.astype(np.int16))[inside]  # (K, 3)
    assert change.mean() > MIN_MEAN_CHANGE, f"mean change inside the mask only {change.mean():.2f}"


@pytest.mark.parametrize("image_name", ["object", "texture"])
@pytest.mark.parametrize("source", SOURCE_KINDS)
@pytest.mark.parametrize("mask_kind", MASK_KINDS)
def test_each_mask_and_source_kind_gives_a_valid_anomaly(images, image_name, source, mask_kind):
    image, pool = images[image_name]
    generator = generator_with(probability=1.0, mask=mask_kind, sources=(source,))
    rng = np.random.default_rng(7)
    for _ in range(4):
        assert_valid(generator(image, pool, rng), image, generator)
    assert np.array_equal(image, images[image_name][0])  # the input is not modified in place


@pytest.mark.parametrize("source", ["rotate", "patches"])
def test_source_identical_to_the_image_is_replaced_by_a_visible_one(source):
    # A centred disc rotated or flipped about the centre is the same disc, and a uniform object
    # cut into tiles is the same object: pasted as they are, these anomalies would be invisible.
    image = disc_image()
    generator = generator_with(probability=1.0, mask="blobs", sources=(source,), max_area_fraction=0.05)
    rng = np.random.default_rng(2)
    for _ in range(5):
        assert_valid(generator(image, image[None], rng), image, generator)


def test_area_stays_within_custom_bounds(images):
    image, pool = images["texture"]
    generator = generator_with(probability=1.0, mask="mixed", min_area_fraction=0.05, max_area_fraction=0.1)
    rng = np.random.default_rng(3)
    for _ in range(15):
        assert_valid(generator(image, pool, rng), image, generator)


def test_impossible_area_bounds_fall_back_to_a_non_empty_ellipse(images):
    image, pool = images["texture"]
    # Perlin masks with a very high threshold are nearly always empty: the fallback must kick in.
    generator = generator_with(probability=1.0, perlin_threshold=0.99, min_area_fraction=0.01, max_area_fraction=0.05)
    anomaly = generator(image, pool, np.random.default_rng(0))
    assert_valid(anomaly, image, generator)


def test_same_seed_same_anomaly_different_seed_different(images):
    image, pool = images["texture"]
    generator = generator_with(probability=1.0, mask="mixed")
    a = generator(image, pool, np.random.default_rng(11))
    b = generator(image, pool, np.random.default_rng(11))
    c = generator(image, pool, np.random.default_rng(12))
    assert np.array_equal(a.image, b.image) and np.array_equal(a.mask, b.mask)
    assert not np.array_equal(a.mask, c.mask)
    assert not np.array_equal(a.image, c.image)


def test_probability_is_the_chance_an_anomaly_is_added(images):
    image, pool = images["object"]
    never = generator_with(probability=0.0)
    always = generator_with(probability=1.0)
    half = generator_with(probability=0.5)
    rng = np.random.default_rng(5)
    for _ in range(10):
        untouched = never(image, pool, rng)
        assert np.array_equal(untouched.image, image) and untouched.image is not image
        assert untouched.mask.dtype == np.float32 and not untouched.mask.any()
        assert always(image, pool, rng).mask.any()
    added = sum(bool(half(image, pool, rng).mask.any()) for _ in range(100))
    assert 30 <= added <= 70


def test_foreground_only_keeps_anomalies_on_the_object(images):
    image, pool = images["object"]
    allowed = disc_support(extra_radius=2)  # 2 px tolerance for the disc's anti-aliased edge
    rng = np.random.default_rng(0)
    for mask_kind in MASK_KINDS:
        generator = generator_with(probability=1.0, mask=mask_kind)
        for _ in range(8):
            mask = generator(image, pool, rng).mask > 0
            assert not (mask & ~allowed).any(), f"{mask_kind} mask left the object"


def test_without_foreground_only_anomalies_also_hit_the_background(images):
    image, pool = images["object"]
    generator = generator_with(probability=1.0, mask="blobs", foreground_only=False)
    rng = np.random.default_rng(0)
    outside = [(generator(image, pool, rng).mask > 0)[~disc_support()].any() for _ in range(10)]
    assert any(outside)


def test_foreground_mask_finds_the_disc():
    estimate = foreground_mask(disc_image())
    truth = disc_support()
    assert estimate.dtype == bool and estimate.shape == (SIZE, SIZE)
    assert (estimate & truth).sum() / (estimate | truth).sum() > 0.95  # IoU


def test_foreground_mask_of_a_texture_is_everything():
    assert foreground_mask(noise_texture()).all()


def test_foreground_mask_of_a_ring_keeps_its_large_hole_as_background():
    image = np.full((SIZE, SIZE, 3), 30, np.uint8)
    cv2.circle(image, DISC_CENTRE, 26, (190, 185, 170), thickness=-1)
    cv2.circle(image, DISC_CENTRE, 12, (30, 30, 30), thickness=-1)  # 11 % of the image: a real hole
    cv2.circle(image, (SIZE // 2, 12), 2, (30, 30, 30), thickness=-1)  # a small dark spot on the ring
    estimate = foreground_mask(image)
    assert not estimate[SIZE // 2, SIZE // 2], "the ring's hole became foreground"
    assert estimate[12, SIZE // 2], "a small dark spot on the object was not filled"
    assert not estimate[0, 0]


def test_foreground_mask_of_a_tiny_object_is_everything():
    image = np.full((SIZE, SIZE, 3), 20, np.uint8)
    cv2.circle(image, DISC_CENTRE, 5, (200, 200, 200), thickness=-1)  # 2 % of the image
    assert foreground_mask(image).all()


def test_perlin_noise_any_size_bounded_and_seeded():
    a = perlin_noise((50, 70), (3, 7), np.random.default_rng(1))
    b = perlin_noise((50, 70), (3, 7), np.random.default_rng(1))
    assert a.shape == (50, 70) and a.dtype == np.float32
    assert np.array_equal(a, b)
    assert np.abs(a).max() <= 1.0 + 1e-5 and a.std() > 0.05


@pytest.mark.parametrize(
    "settings, key",
    [
        ({"probability": 1.5}, "anomalies.probability"),
        ({"probability": -0.1}, "anomalies.probability"),
        ({"mask": "stars"}, "anomalies.mask"),
        ({"sources": []}, "anomalies.sources"),
        ({"sources": ["patches", "glitter"]}, "anomalies.sources"),
        ({"sources": "texture"}, "anomalies.sources"),
        ({"opacity_min": 0.0}, "anomalies.opacity_min"),
        ({"opacity_max": 1.2}, "anomalies.opacity_max"),
        ({"opacity_min": 0.8, "opacity_max": 0.5}, "opacity_min"),
        ({"foreground_only": "yes"}, "anomalies.foreground_only"),
    ],
)
def test_invalid_settings_are_refused_by_config_naming_the_key(settings, key):
    """The generator takes params.anomalies as given: its checks live once, in config."""
    with pytest.raises(ConfigError, match=key):
        parse_params({"anomalies": settings})


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"perlin_scale_max": -1}, "perlin_scale_max"),
        ({"perlin_scale_max": 2.5}, "perlin_scale_max"),
        ({"perlin_threshold": 2.0}, "perlin_threshold"),
        ({"min_area_fraction": -0.1}, "min_area_fraction"),
        ({"max_area_fraction": 0.0}, "max_area_fraction"),
        ({"min_area_fraction": 0.3, "max_area_fraction": 0.2}, "min_area_fraction"),
    ],
)
def test_invalid_mask_shape_constants_name_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=name):
        generator_with(**kwargs)


def test_invalid_inputs_are_rejected(images):
    image, pool = images["texture"]
    generator = generator_with(probability=1.0)
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="image"):
        generator(image.astype(np.float32), pool, rng)
    with pytest.raises(ValueError, match="source_pool"):
        generator(image, pool[:, :32], rng)
    with pytest.raises(ValueError, match="source_pool"):
        generator(image, pool[:0], rng)


def test_grey_images_get_grey_anomalies():
    """A colour paste on a grey category would teach a shortcut real defects never offer."""
    rng = np.random.default_rng(0)
    grey = np.repeat(rng.integers(0, 256, (64, 64, 1), dtype=np.uint8), 3, axis=2)
    pool = np.stack([grey, np.repeat(rng.integers(0, 256, (64, 64, 1), dtype=np.uint8), 3, axis=2)])
    for source in SOURCE_KINDS:
        generator = generator_with(probability=1.0, sources=(source,), foreground_only=False)
        for seed in range(5):
            anomaly = generator(grey, pool, np.random.default_rng(seed))
            assert anomaly.mask.sum() > 0
            assert np.array_equal(anomaly.image[..., 0], anomaly.image[..., 1]) and np.array_equal(
                anomaly.image[..., 0], anomaly.image[..., 2]
            ), source


def test_shade_changes_the_level_but_keeps_the_texture(images):
    """A stain-like anomaly: every pasted pixel moves the same way, and the texture survives."""
    image, pool = images["texture"]
    generator = generator_with(
        probability=1.0, sources=("shade",), opacity_min=1.0, opacity_max=1.0, foreground_only=False
    )
    directions = set()
    for seed in range(8):
        anomaly = generator(image, pool, np.random.default_rng(seed))
        inside = anomaly.mask == 1.0
        change = anomaly.image.astype(np.int16)[inside] - image.astype(np.int16)[inside]  # (K, 3)
        # One direction for the whole region (pixels pinned at 0 or 255 by clipping do not move).
        assert (change >= 0).all() or (change <= 0).all(), f"seed {seed}: mixed directions"
        directions.add(int(np.sign(change.sum())))
        # The texture survives: away from clipping, the anomaly follows the image pixel by pixel.
        unclipped = ((anomaly.image[inside] > 0) & (anomaly.image[inside] < 255)).all(axis=1)
        correlation = np.corrcoef(
            anomaly.image[inside][unclipped, 0].astype(float), image[inside][unclipped, 0].astype(float)
        )[0, 1]
        assert correlation > 0.8, f"seed {seed}: correlation {correlation:.2f}"
    assert directions == {-1, 1}, "both brighter and darker stains are drawn"
