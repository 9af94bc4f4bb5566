import numpy as np
import pytest
from marsseg.edge.terrain import CostTable, terrain_grid

TABLE = CostTable((float("nan"), 1.0, 2.0, 5.0, float("inf")), lethal_fraction=0.05, max_unknown=0.5)


def test_majority_fractions_and_costs():
    mask = np.zeros((4, 6), np.uint8)
    mask[:2, :2] = 1  # soil cell
    mask[:2, 2:4] = [[2, 2], [2, 3]]  # bedrock 3/4, sand 1/4
    mask[:2, 4:6] = [[1, 1], [1, 4]]  # one big-rock pixel: lethal
    conf = np.full(mask.shape, 0.5, np.float32)
    g = terrain_grid(mask, conf, (2, 2), TABLE)
    assert g.shape == (2, 3) and g.cell == (2, 2) and g.origin == (0, 0)
    np.testing.assert_array_equal(g.classes, [[1, 2, 1], [0, 0, 0]])
    assert g.cost[0, 0] == 1.0
    assert g.cost[0, 1] == pytest.approx(0.75 * 2 + 0.25 * 5)
    assert np.isinf(g.cost[0, 2])
    assert np.isnan(g.cost[1]).all()  # all background: unknown
    np.testing.assert_allclose(g.fractions.sum(-1), 1.0)
    np.testing.assert_allclose(g.confidence, 0.5)


def test_partial_edge_cells():
    mask = np.ones((5, 7), np.uint8)
    g = terrain_grid(mask, np.ones(mask.shape, np.float32), (4, 4), TABLE)
    assert g.shape == (2, 2)
    assert (g.cost == 1.0).all()


def test_bad_cell():
    with pytest.raises(ValueError, match="cell size"):
        terrain_grid(np.zeros((4, 4), np.uint8), np.zeros((4, 4), np.float32), (0, 2), TABLE)


def test_matches_per_cell_reference_on_random_maps():
    rng = np.random.default_rng(3)
    for _ in range(20):
        h, w = rng.integers(1, 60, 2)
        ch, cw = rng.integers(1, 12, 2)
        mask = rng.integers(0, 5, (h, w), dtype=np.uint8)
        conf = rng.random((h, w), dtype=np.float32)
        g = terrain_grid(mask, conf, (int(ch), int(cw)), TABLE)
        for r in range(g.shape[0]):
            for c in range(g.shape[1]):
                m = mask[r * ch : (r + 1) * ch, c * cw : (c + 1) * cw]
                frac = np.bincount(m.ravel(), minlength=5) / m.size
                np.testing.assert_allclose(g.fractions[r, c], frac, rtol=1e-5)
                assert g.classes[r, c] == frac.argmax()
                assert g.confidence[r, c] == pytest.approx(conf[r * ch : (r + 1) * ch, c * cw : (c + 1) * cw].mean(),
                                                           rel=1e-4)


def test_low_confidence_cells_are_unknown_but_lethal_wins():
    mask = np.ones((2, 6), np.uint8)
    mask[0, 5] = 4  # a big-rock pixel in the third cell
    conf = np.array([[0.9, 0.9, 0.5, 0.6, 0.2, 0.2], [0.9, 0.9, 0.6, 0.7, 0.2, 0.2]], np.float32)
    strict = CostTable(TABLE.costs, lethal_fraction=0.05, min_confidence=0.7)
    g = terrain_grid(mask, conf, (2, 2), strict)
    assert g.cost[0, 0] == 1.0  # mean confidence 0.9
    assert np.isnan(g.cost[0, 1])  # mean 0.6 < 0.7: unknown
    assert np.isinf(g.cost[0, 2])  # unsure, but a rock: stays lethal
    assert not np.isnan(terrain_grid(mask, conf, (2, 2), TABLE).cost[0, 1])  # off by default


def test_cost_table_rejects_out_of_range_confidence():
    with pytest.raises(ValueError, match=r"min_confidence in \[0, 1\]"):
        CostTable(TABLE.costs, min_confidence=1.5)


def test_the_map_made_at_the_models_scale_matches_the_one_made_at_the_frames_size():
    """A 1024-px frame segmented at 1/8 (the navcam at the model's ground scale): counting 16-px cells as 2x2 model
    pixels gives the classes and fractions of the mask brought to the frame's size, confidence within 0.02."""
    import cv2
    from marsseg.edge.publishers import Result

    rng = np.random.default_rng(0)
    mask = cv2.resize(rng.integers(1, 5, (16, 16), dtype=np.uint8), (128, 128), interpolation=cv2.INTER_NEAREST)
    conf = cv2.GaussianBlur(rng.random((128, 128), dtype=np.float32), (0, 0), 2)
    table = CostTable((float("nan"), 1.0, 2.0, 5.0, float("inf")), min_confidence=0.45)

    def at_frame_size(m, c, shape):
        size = (shape[1], shape[0])
        return terrain_grid(cv2.resize(m, size, interpolation=cv2.INTER_NEAREST),
                            cv2.resize(c, size, interpolation=cv2.INTER_LINEAR), (16, 16), table)

    def at_model_scale(m, c, shape):
        return Result(np.zeros(shape, np.uint8), m, c).grid_at(16, table)

    before, now = at_frame_size(mask, conf, (1024, 1024)), at_model_scale(mask, conf, (1024, 1024))
    assert now.cell == before.cell == (16, 16) and now.shape == before.shape == (64, 64)
    np.testing.assert_array_equal(now.classes, before.classes)
    np.testing.assert_allclose(now.fractions, before.fractions, atol=1e-6)
    assert np.abs(now.confidence - before.confidence).max() < 0.02
    same_cost = (now.cost == before.cost) | (np.isnan(now.cost) & np.isnan(before.cost))
    assert same_cost.mean() > 0.97  # only cells whose confidence sits at min_confidence may flip to unknown
    odd = (1000, 750)  # 16 px is not a whole number of model pixels here: counted at the frame's size
    m, c = cv2.resize(mask, (94, 125), interpolation=cv2.INTER_NEAREST), cv2.resize(conf, (94, 125))
    np.testing.assert_array_equal(at_model_scale(m, c, odd).classes, at_frame_size(m, c, odd).classes)
