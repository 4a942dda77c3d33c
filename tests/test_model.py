import pytest
import torch

from polypseg.model import SIZE_MULTIPLE, UNet, nearest_valid_size


def test_card_model_has_31_million_parameters():
    model = UNet(in_channels=3, num_classes=3)
    count = sum(p.numel() for p in model.parameters())
    assert 31.0e6 <= count <= 31.1e6


@pytest.mark.parametrize("height, width", [(64, 64), (32, 48)])
def test_output_shape_matches_input(tiny_unet, height, width):
    with torch.no_grad():
        out = tiny_unet(torch.rand(2, 3, height, width))
    assert out.shape == (2, 3, height, width)
    assert out.dtype == torch.float32


def test_num_classes_sets_output_channels():
    model = UNet(in_channels=1, num_classes=5, base_channels=4).eval()
    with torch.no_grad():
        assert model(torch.rand(1, 1, 32, 32)).shape == (1, 5, 32, 32)


@pytest.mark.parametrize(
    "height, width, suggested",
    [(250, 250, "256x256"), (65, 64, "64x64"), (64, 70, "64x64"), (8, 8, "16x16")],
)
def test_wrong_size_names_nearest_valid_size(tiny_unet, height, width, suggested):
    with pytest.raises(ValueError, match=suggested):
        tiny_unet(torch.rand(1, 3, height, width))


@pytest.mark.parametrize("shape", [(1, 1, 64, 64), (1, 4, 64, 64), (3, 64, 64)])
def test_wrong_channels_or_rank_raises(tiny_unet, shape):
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        tiny_unet(torch.rand(*shape))


def test_nearest_valid_size():
    assert nearest_valid_size(250) == 256
    assert nearest_valid_size(256) == 256
    assert nearest_valid_size(1) == SIZE_MULTIPLE
    assert nearest_valid_size(71) == 64


@pytest.mark.parametrize("base_channels, head_kernel_size", [(7, 3), (0, 3), (8, 2)])
def test_invalid_constructor_arguments(base_channels, head_kernel_size):
    with pytest.raises(ValueError):
        UNet(base_channels=base_channels, head_kernel_size=head_kernel_size)


def test_module_names_are_stable(tiny_unet):
    names = set(tiny_unet.state_dict())
    for expected in [
        "encoder.0.0.weight",
        "encoder.0.1.running_mean",
        "encoder.3.3.weight",
        "bottleneck.0.weight",
        "upsample.0.weight",
        "upsample.3.bias",
        "decoder.0.0.weight",
        "decoder.3.4.running_var",
        "head.0.weight",
        "head.1.weight",
        "classifier.weight",
        "classifier.bias",
    ]:
        assert expected in names
    assert tiny_unet.upsample[0].weight.shape == (128, 64, 2, 2)
    assert tiny_unet.classifier.weight.shape == (3, 4, 1, 1)


def test_config_rebuilds_the_same_architecture(tiny_unet):
    rebuilt = UNet(**tiny_unet.config)
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {
        k: v.shape for k, v in tiny_unet.state_dict().items()
    }


def test_head_kernel_size_one():
    model = UNet(base_channels=8, head_kernel_size=1).eval()
    assert model.head[0].weight.shape == (4, 8, 1, 1)
    with torch.no_grad():
        assert model(torch.rand(1, 3, 32, 32)).shape == (1, 3, 32, 32)


def test_gradients_reach_the_first_layer(tiny_unet):
    tiny_unet.train()
    tiny_unet(torch.rand(2, 3, 32, 32)).sum().backward()
    assert tiny_unet.encoder[0][0].weight.grad is not None
    assert tiny_unet.encoder[0][0].weight.grad.abs().sum() > 0


def test_top_level_import():
    from polypseg import UNet as TopLevelUNet

    assert TopLevelUNet is UNet
