import pytest
import torch
import torchvision

from spine_model.model import (
    PretrainedWeightsUnavailable,
    SpineNet,
    adapt_input_conv,
    create_model,
    pretrained_weights_file,
)


def test_forward_shape_and_coordinate_channel():
    model = create_model("resnet18", pretrained=False, image_size=64).eval()
    logits = model(torch.randn(2, 1, 64, 64), torch.rand(2, 2))
    assert logits.shape == (2, 5, 5, 3)
    assert model.trunk[0].in_channels == 2
    assert model.coord_map.out_features == 64 * 64


def test_adapt_input_conv_sums_rgb_and_zeroes_the_coordinate_channel():
    rgb = torch.randn(64, 3, 7, 7)
    adapted = adapt_input_conv(rgb)
    assert adapted.shape == (64, 2, 7, 7)
    torch.testing.assert_close(adapted[:, 0], rgb.sum(dim=1))
    assert adapted[:, 1].abs().sum() == 0


def test_pretrained_weights_load_from_the_torch_hub_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    reference = torchvision.models.resnet18(weights=None)
    cached = pretrained_weights_file("resnet18")
    assert cached.is_relative_to(tmp_path)
    cached.parent.mkdir(parents=True)
    torch.save(reference.state_dict(), cached)

    model = create_model("resnet18", pretrained=True, image_size=64, allow_download=False)
    conv1 = model.trunk[0].weight.detach()
    torch.testing.assert_close(conv1[:, 0], reference.conv1.weight.sum(dim=1))
    assert conv1[:, 1].abs().sum() == 0
    torch.testing.assert_close(model.trunk[7][1].conv2.weight, reference.layer4[1].conv2.weight)
    torch.testing.assert_close(model.trunk[1].running_var, reference.bn1.running_var)


def test_missing_weights_offline_say_how_to_provide_them(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(PretrainedWeightsUnavailable) as error:
        create_model("resnet18", pretrained=True, image_size=64, allow_download=False)
    message = str(error.value)
    assert "resnet18-f37072fd.pth" in message and str(tmp_path) in message
    assert "--no-pretrained" in message and "TORCH_HOME" in message


def test_spinenet_supports_deeper_backbones():
    model = SpineNet("resnet50", image_size=64).eval()
    assert model(torch.randn(1, 1, 64, 64), torch.rand(1, 2)).shape == (1, 5, 5, 3)
