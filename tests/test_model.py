import pytest
import torch

from anomaly_spotter.config import parse_params
from anomaly_spotter.detectors import check_params
from anomaly_spotter.detectors.autoencoder import AutoencoderUNetLite, count_parameters
from anomaly_spotter.errors import ConfigError


def unet(**changes) -> AutoencoderUNetLite:
    """The autoencoder params.yaml's defaults describe, with ``changes`` to its arguments."""
    defaults = AutoencoderUNetLite.from_params(parse_params({})).architecture()
    arguments = {key: defaults[key] for key in ("base_channels", "bottleneck_channels", "skips", "image_size")}
    return AutoencoderUNetLite(**{**arguments, **changes})


def test_shape_and_range():
    model = unet().eval()
    x = torch.rand(2, 3, 128, 128) * 2 - 1
    with torch.no_grad():
        y = model(x)
    assert y.shape == (2, 3, 128, 128)
    assert y.min() >= -1 and y.max() <= 1  # tanh output


def test_parameter_count_is_about_1_9_million():
    assert 1_750_000 <= count_parameters(unet()) <= 2_100_000


def test_skips_add_decoder_inputs_and_change_behaviour():
    plain = unet(skips=())
    full = unet(skips=(1, 2, 3))
    assert count_parameters(full) > count_parameters(plain)
    assert full.skips == (1, 2, 3)
    assert full.dec1[0].in_channels == 2 * plain.dec1[0].in_channels


@pytest.mark.parametrize(
    "shape, dtype, message",
    [
        ((3, 128, 128), torch.float32, "rank 3"),
        ((1, 1, 128, 128), torch.float32, r"3 \(RGB\) channels"),
        ((1, 3, 64, 64), torch.float32, "128x128"),
        ((1, 3, 128, 128), torch.uint8, "float"),
    ],
)
def test_input_validation(shape, dtype, message):
    with pytest.raises(ValueError, match=message):
        unet()(torch.zeros(shape, dtype=dtype))


def test_a_side_the_autoencoder_cannot_halve_three_times_is_refused_before_any_work():
    with pytest.raises(
        ConfigError, match=r"preprocess.image_size: 100 must be divisible by 8 for model.kind reconstruction"
    ):
        check_params(parse_params({"preprocess": {"image_size": 100}, "model": {"kind": "reconstruction"}}))
    with pytest.raises(
        ConfigError, match=r"preprocess.image_size: 100 must be divisible by 8 for model.kind discriminative"
    ):
        check_params(parse_params({"preprocess": {"image_size": 100}, "model": {"kind": "discriminative"}}))
    check_params(
        parse_params({"preprocess": {"image_size": 100}, "model": {"kind": "patchcore"}})
    )  # patchcore takes any side
