import pytest
import torch

from anomaly_spotter.detectors.autoencoder import AutoencoderUNetLite, count_parameters


def test_shape_and_range():
    model = AutoencoderUNetLite().eval()
    x = torch.rand(2, 3, 128, 128) * 2 - 1
    with torch.no_grad():
        y = model(x)
    assert y.shape == (2, 3, 128, 128)
    assert y.min() >= -1 and y.max() <= 1  # tanh output


def test_parameter_count_is_about_1_9_million():
    assert 1_750_000 <= count_parameters(AutoencoderUNetLite()) <= 2_100_000


def test_skips_add_decoder_inputs_and_change_behaviour():
    plain = AutoencoderUNetLite(skips=())
    full = AutoencoderUNetLite(skips=(1, 2, 3))
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
        AutoencoderUNetLite()(torch.zeros(shape, dtype=dtype))


def test_bad_construction():
    with pytest.raises(ValueError, match="divisible by 8"):
        AutoencoderUNetLite(image_size=100)
    with pytest.raises(ValueError, match="levels 1, 2 or 3"):
        AutoencoderUNetLite(skips=(4,))
