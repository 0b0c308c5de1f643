"""Per-example random streams (wciaudit.attacks.seeding): a row depends only on the key
and the example's global index, never on the batch it is drawn in."""

from __future__ import annotations

import pytest
import torch

from wciaudit.attacks.seeding import (
    example_generators,
    global_indices,
    mix,
    per_example_normal,
    per_example_uniform,
)


@pytest.mark.parametrize("draw", [per_example_uniform, per_example_normal])
def test_a_row_depends_only_on_the_key_and_the_global_index(draw) -> None:  # noqa: ANN001
    whole = draw((6, 2, 3), range(100, 106), key=(7, 1, 0))
    # any subset, in any order, as a tensor or a list: the same rows
    part = draw((3, 2, 3), torch.tensor([105, 100, 103]), key=(7, 1, 0))
    assert torch.equal(part, whole[[5, 0, 3]])
    assert whole.dtype == torch.float32 and whole.device.type == "cpu"
    # another key or another index gives another draw in every row
    for other in (
        draw((6, 2, 3), range(100, 106), key=(7, 1, 1)),
        draw((6, 2, 3), range(106, 112), key=(7, 1, 0)),
    ):
        assert not torch.isclose(whole, other).flatten(1).all(1).any()


def test_uniform_and_normal_draws_have_their_distributions() -> None:
    # 20,000 values: the mean of U[0, 1) has SE 0.29 / sqrt(n) = 0.002 and that of N(0, 1)
    # 0.007, its variance SE sqrt(2 / n) = 0.01; 5 SE bounds are never hit by chance
    u = per_example_uniform((2000, 10), range(2000), key=(3,))
    z = per_example_normal((2000, 10), range(2000), key=(3,))
    assert float(u.min()) >= 0 and float(u.max()) < 1
    assert abs(float(u.mean()) - 0.5) < 5 * 0.29 / 20000**0.5
    assert abs(float(z.mean())) < 5 / 20000**0.5
    assert abs(float(z.var()) - 1) < 5 * (2 / 20000) ** 0.5


def test_mix_separates_the_tuples_a_linear_hash_would_merge() -> None:
    # restart 1 of example 0 against restart 0 of example p: a * p + b collides, mix not
    p = 1_000_003
    assert mix(0, 1) != mix(1, 0) and mix(0, p) != mix(1, 0)
    seeds = {
        mix(seed, index, restart)
        for seed in range(4)
        for index in range(50)
        for restart in range(5)
    }
    assert len(seeds) == 4 * 50 * 5 and all(0 <= s < 2**63 for s in seeds)


def test_example_generators_follow_the_global_index_and_the_seed() -> None:
    def first_draw(seed: int, indices: list[int], k: int) -> torch.Tensor:
        return torch.rand(3, generator=example_generators(seed, torch.tensor(indices), 2)[k])

    assert torch.equal(first_draw(0, [4, 9], 1), first_draw(0, [9], 0))
    assert not torch.equal(first_draw(0, [9], 0), first_draw(1, [9], 0))


def test_global_indices_and_a_wrong_count() -> None:
    assert torch.equal(global_indices(3), torch.tensor([0, 1, 2]))
    assert torch.equal(global_indices(3, index_offset=17), torch.tensor([17, 18, 19]))
    assert torch.equal(global_indices(2, torch.tensor([[5], [2]])), torch.tensor([5, 2]))
    with pytest.raises(ValueError, match="3 indices for 2 examples"):
        global_indices(2, torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="2 indices for 3 examples"):
        per_example_uniform((3, 1), [0, 1], key=(0,))
