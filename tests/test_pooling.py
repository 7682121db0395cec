"""apcnet.pooling: the exportable adaptive average pool gives PyTorch's bins at every size."""

import pytest
import torch
import torch.nn.functional as F

from apcnet.pooling import adaptive_avg_pool2d, bin_average_matrix, bin_average_pool2d

POOL_SCALES = (1, 2, 3, 6)
SIZES = range(1, 41)


pytestmark = pytest.mark.usefixtures("single_torch_thread")


@pytest.mark.parametrize("scale", POOL_SCALES)
def test_bin_average_pool_equals_adaptive_avg_pool2d_at_every_size_from_1_to_40(scale):
    generator = torch.Generator().manual_seed(scale)
    worst = 0.0
    for height in SIZES:
        for width in SIZES:
            features = torch.randn(2, 3, height, width, generator=generator)
            expected = F.adaptive_avg_pool2d(features, scale)
            difference = (bin_average_pool2d(features, scale) - expected).abs().max().item()
            worst = max(worst, difference)
    assert worst <= 1e-6


def test_bin_average_matrix_rows_are_pytorch_bins_that_overlap_when_the_scale_does_not_divide():
    # 5 positions into 3 bins: [0, 2), [1, 4), [3, 5) as floor(i*5/3) .. ceil((i+1)*5/3).
    matrix = bin_average_matrix(5, 3, torch.zeros(()))
    expected = torch.tensor(
        [[1 / 2, 1 / 2, 0, 0, 0], [0, 1 / 3, 1 / 3, 1 / 3, 0], [0, 0, 0, 1 / 2, 1 / 2]]
    )
    torch.testing.assert_close(matrix, expected)


def test_eager_pooling_is_pytorchs_own_op_bit_for_bit():
    features = torch.randn(1, 4, 13, 17, generator=torch.Generator().manual_seed(0))
    assert torch.equal(adaptive_avg_pool2d(features, 6), F.adaptive_avg_pool2d(features, 6))


def test_exported_pooling_is_right_at_sizes_other_than_the_traced_one():
    class Pool(torch.nn.Module):
        def forward(self, features):
            return adaptive_avg_pool2d(features, 6)

    dims = {2: torch.export.Dim("height", min=2), 3: torch.export.Dim("width", min=2)}
    program = torch.export.export(
        Pool(), (torch.randn(1, 2, 24, 36),), dynamic_shapes={"features": dims}
    )
    for height, width in ((13, 17), (5, 40), (7, 7)):
        features = torch.randn(1, 2, height, width)
        torch.testing.assert_close(
            program.module()(features), F.adaptive_avg_pool2d(features, 6), rtol=0, atol=1e-6
        )
