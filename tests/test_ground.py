"""The ground cost map: a scene rendered from a known camera geometry lands in the right cells."""

import math

import numpy as np
import pytest
from marsseg.edge.ground import CameraGeometry, GroundLayout, GroundProjector, ground_homography
from marsseg.edge.terrain import CostTable

TABLE = CostTable((float("nan"), 1.0, 2.0, 5.0, float("inf")), lethal_fraction=0.5)
SIZE = (640, 480)


def checker(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Classes 1-4 in 1-m squares on the ground."""
    return (1 + np.floor(x) % 2 + 2 * (np.floor(y) % 2)).astype(np.uint8)


def render(g: CameraGeometry, size=SIZE) -> np.ndarray:
    """The class mask a camera sees of the checkerboard, by casting each pixel's ray (sky: class 0). Written
    from the geometry directly (not through the homography under test)."""
    w, h = size
    f = w / 2 / math.tan(math.radians(g.hfov) / 2)
    u, v = np.meshgrid(np.arange(w) + 0.5, np.arange(h) + 0.5)
    rays_cam = np.stack([(u - w / 2) / f, (v - h / 2) / f, np.ones_like(u)], -1)
    rays = rays_cam @ g.rotation()  # camera -> rover frame: R^T applied to each ray
    down = rays[..., 2] < 0
    t = np.where(down, -g.height / np.where(down, rays[..., 2], -1), 0)
    return np.where(down, checker(t * rays[..., 0], t * rays[..., 1]), 0).astype(np.uint8)


LAYOUT = GroundLayout(cell=0.1, depth=10, width=10)


def project(g: CameraGeometry, layout=LAYOUT, min_confidence=0.0, conf=None):
    mask = render(g)
    table = CostTable(TABLE.costs, TABLE.lethal_fraction, min_confidence=min_confidence)
    conf = np.ones(mask.shape, np.float32) if conf is None else conf
    return GroundProjector(g, layout, SIZE)(mask, conf, table), layout


@pytest.mark.parametrize("geometry", [CameraGeometry(45, 1.9, 30), CameraGeometry(60, 1.0, 20, roll=8),
                                      CameraGeometry(45, 1.9, 10, roll=-5)])
def test_a_checkerboard_lands_in_the_right_cells(geometry):
    grid, layout = project(geometry)
    i, j = np.meshgrid(np.arange(layout.rows), np.arange(layout.cols), indexing="ij")
    x = layout.near + (i + 0.5) * layout.cell
    y = -layout.width / 2 + (j + 0.5) * layout.cell
    known = grid.seen & (grid.classes > 0)
    assert known.sum() > 1000
    wrong = known & (grid.classes != checker(x, y))
    # a wrong cell is one whose cell touches a square's edge: within one cell of where the class changes
    near_edge = (np.abs(x - np.round(x)) <= 1.5 * layout.cell) | (np.abs(y - np.round(y)) <= 1.5 * layout.cell)
    assert not (wrong & ~near_edge).any(), f"{(wrong & ~near_edge).sum()} cells off by more than one cell"
    assert wrong.sum() < 0.1 * known.sum()
    assert np.isnan(grid.cost[~grid.seen]).all() and (grid.classes[~grid.seen] == 0).all()


def test_what_the_camera_cannot_see_is_unknown():
    g = CameraGeometry(45, 1.9, 30)
    grid, layout = project(g)
    x = layout.near + (np.arange(layout.rows) + 0.5) * layout.cell
    vfov = 2 * math.atan(math.tan(math.radians(g.hfov / 2)) * SIZE[1] / SIZE[0])
    nearest = g.height / math.tan(math.radians(g.pitch) + vfov / 2)  # the bottom row's ray meets the ground here
    assert not grid.seen[x < nearest - 0.1].any() and grid.seen[x > nearest + 0.2].any()
    y = -layout.width / 2 + (np.arange(layout.cols) + 0.5) * layout.cell
    half = math.tan(math.radians(g.hfov / 2))
    p = math.radians(g.pitch)
    depth = x[:, None] * math.cos(p) + g.height * math.sin(p)  # along the optical axis
    beside = np.abs(y)[None, :] > depth * half + 0.3  # outside the horizontal field of view
    assert not grid.seen[beside].any()


def test_the_sky_never_lands_on_the_ground():
    g = CameraGeometry(45, 1.9, 5)  # the horizon crosses the picture
    proj = GroundProjector(g, GroundLayout(cell=0.5, depth=200, width=100), SIZE)
    f = SIZE[0] / 2 / math.tan(math.radians(g.hfov) / 2)
    horizon = SIZE[1] / 2 - f * math.tan(math.radians(g.pitch))  # image row of the horizon
    rows = (proj.pixel_cell.reshape(SIZE[1], SIZE[0]) >= 0).any(axis=1)
    assert not rows[: int(horizon)].any() and rows[int(horizon) + 2 :].any()


def test_image_centre_looks_at_the_ground_straight_ahead():
    for roll in (0, 12):
        g = CameraGeometry(45, 2.0, 30, roll=roll)
        h = ground_homography(g, *SIZE)
        ahead = h @ [2.0 / math.tan(math.radians(30)), 0, 1]
        np.testing.assert_allclose(ahead[:2] / ahead[2], [SIZE[0] / 2, SIZE[1] / 2], atol=1e-6)
    right = ground_homography(CameraGeometry(45, 2.0, 30), *SIZE) @ [3.0, -1.0, 1]  # y < 0: the rover's right
    assert right[0] / right[2] > SIZE[0] / 2


def test_low_confidence_and_lethal_cells():
    g = CameraGeometry(45, 1.9, 30)
    conf = np.full((SIZE[1], SIZE[0]), 0.9, np.float32)
    conf[:, : SIZE[0] // 2] = 0.3  # the left half of the picture is unsure: the rover's left (y > 0)
    grid, layout = project(g, min_confidence=0.5, conf=conf)
    y = -layout.width / 2 + (np.arange(layout.cols) + 0.5) * layout.cell
    left, right = grid.seen & (y > 0.3)[None, :], grid.seen & (y < -0.3)[None, :]
    lethal = grid.fractions[..., 4] >= 0.5
    assert np.isnan(grid.cost[left & ~lethal]).all()  # unsure: unknown, unless lethal
    assert np.isinf(grid.cost[lethal]).all() and lethal.any()
    assert np.isfinite(grid.cost[right & ~lethal & (grid.classes > 0)]).all()


@pytest.mark.parametrize(("kwargs", "words"), [
    ({"hfov": 45, "height": 1.9, "pitch": 0}, "below the horizon"),
    ({"hfov": 45, "height": 1.9, "pitch": -10}, "below the horizon"),
    ({"hfov": 45, "height": 0, "pitch": 30}, "above the ground"),
    ({"hfov": 0, "height": 1, "pitch": 30}, "field of view"),
])
def test_bad_geometry_is_one_line(kwargs, words):
    with pytest.raises(ValueError, match=words) as e:
        CameraGeometry(**kwargs)
    assert "\n" not in str(e.value)


def test_bad_layout_and_mismatched_mask():
    with pytest.raises(ValueError, match="cell must be > 0"):
        GroundLayout(cell=0)
    proj = GroundProjector(CameraGeometry(45, 1.9, 30), GroundLayout(cell=0.5), SIZE)
    with pytest.raises(ValueError, match="image size"):
        proj(np.zeros((10, 10), np.uint8), np.zeros((10, 10), np.float32), TABLE)


def test_the_runtime_publishes_the_ground_map(tmp_path, capsys):
    """End to end: the runtime projects each frame's mask at the model's scale and saves the map in metres."""
    import cv2
    from marsseg.edge.cli import main

    from tests.conftest import TINY_MODEL

    frames = tmp_path / "frames"
    frames.mkdir()
    cv2.imwrite(str(frames / "a.png"), (render(CameraGeometry(45, 1.9, 30), (256, 192)) * 60).astype(np.uint8))
    out = tmp_path / "out"
    assert main([str(frames), str(out), "--model", str(TINY_MODEL), "--npz", "--fov", "45", "--scale", "0.5",
                 "--camera-height", "1.9", "--camera-pitch", "30", "--ground-cell", "0.25", "--jsonl"]) == 0
    with np.load(out / "a_map.npz") as z:
        assert z["ground_cost"].shape == (40, 40) and float(z["ground_cell_m"]) == 0.25
        np.testing.assert_allclose(z["ground_origin_m"], [0, -5])
        seen = z["ground_seen"]
        assert seen.any() and not seen.all() and np.isnan(z["ground_cost"][~seen]).all()
    line = capsys.readouterr().out.splitlines()[-1]
    assert '"ground": {"cell_m": 0.25' in line


def test_a_camera_mounted_a_quarter_turn_maps_the_same_ground(tmp_path):
    """The upright camera's frame delivered turned (192x256, its --fov across those 192 px) and turned back by
    --input-flip clockwise gives the upright run's masks and ground map."""
    import cv2
    from marsseg.edge.cli import main

    from tests.conftest import TINY_MODEL

    upright = (render(CameraGeometry(45, 1.9, 30), (256, 192)) * 60).astype(np.uint8)
    delivered_fov = math.degrees(2 * math.atan(math.tan(math.radians(22.5)) * 192 / 256))
    assert CameraGeometry(delivered_fov, 1.9, 30).turned(256, 192).hfov == pytest.approx(45)
    maps = {}
    turned = ["--fov", str(delivered_fov), "--input-flip", "clockwise"]
    for name, image, flags in (("up", upright, ["--fov", "45"]), ("turned", np.rot90(upright), turned)):
        (tmp_path / name).mkdir()
        cv2.imwrite(str(tmp_path / name / "a.png"), image)
        assert main([str(tmp_path / name), str(tmp_path / f"{name}-out"), "--model", str(TINY_MODEL), "--npz",
                     "--scale", "0.5", "--camera-height", "1.9", "--camera-pitch", "30", *flags]) == 0
        with np.load(tmp_path / f"{name}-out" / "a_map.npz") as z:
            maps[name] = {k: z[k] for k in ("mask", "ground_classes", "ground_seen")}
    np.testing.assert_array_equal(maps["up"]["mask"], maps["turned"]["mask"])
    for k in ("ground_classes", "ground_seen"):  # the same homography up to rounding: cells agree but at an edge
        assert (maps["up"][k] == maps["turned"][k]).mean() > 0.999


@pytest.mark.parametrize(("flags", "words"), [
    (["--camera-height", "1.9", "--camera-pitch", "30"], "needs --fov and --camera-pitch"),
    (["--camera-height", "1.9", "--fov", "45"], "needs --fov and --camera-pitch"),
    (["--camera-height", "0", "--fov", "45", "--camera-pitch", "30"], "--camera-height must be in (0, 1000]"),
    (["--camera-height", "1.9", "--fov", "45", "--camera-pitch", "-5"], "--camera-pitch must be in (0, 90]"),
])
def test_bad_ground_flags_are_one_line(flags, words, capsys):
    from marsseg.edge.cli import main

    with pytest.raises(SystemExit) as e:
        main(["--source", "demo", *flags])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert words in err and len(err.splitlines()) == 1


@pytest.mark.parametrize(("baud", "coarsened"), [(921600, False), (19200, True)])
def test_the_ground_map_crosses_the_serial_link(baud, coarsened):
    """Type 3 over pyserial's loop://: cell and origin in millimetres, the planes as projected; a slow link
    gets pooled cells (same origin), counted."""
    from marsseg.edge import protocol as P
    from marsseg.edge.publishers import Result
    from marsseg.edge.serial_link import SerialPublisher
    from marsseg.edge.sources import Frame
    from marsseg.edge.terrain import terrain_grid

    g = CameraGeometry(45, 1.9, 30)
    mask = render(g)
    conf = np.full(mask.shape, 0.8, np.float32)
    ground = GroundProjector(g, LAYOUT, SIZE)(mask, conf, TABLE)
    res = Result(mask, mask, conf, terrain_grid(mask, conf, (16, 16), TABLE), ground=ground)
    pub = SerialPublisher("loop://", baud, TABLE, 5, map_rate=2, heartbeat_s=60, ground=True)
    try:
        pub.publish(Frame("f", 7, 1.0, mask), res)
        assert pub.wait_for(lambda s: s.maps_sent == 1, 10)
        (msg,) = [m for m in P.StreamDecoder().feed(pub._ser.read(pub._ser.in_waiting))
                  if isinstance(m, P.GroundMessage)]
    finally:
        pub.close()
    assert msg.header.type == P.TYPE_GROUND and msg.header.frame_id == 7 and msg.origin == (0, -5000)
    assert (pub.stats.maps_coarsened == 1) == coarsened
    if coarsened:
        k = msg.cell[0] // 100
        assert k >= 2 and msg.classes.shape == (-(-100 // k), -(-100 // k))
        assert P.wire_size(len(msg.payload())) <= pub.budget
    else:
        assert msg.cell == (100, 100)
        np.testing.assert_array_equal(msg.classes, ground.classes)
        np.testing.assert_array_equal(msg.cost == P.COST_UNKNOWN, np.isnan(ground.cost))


def test_pooled_cells_keep_the_classes_of_large_patches():
    g = CameraGeometry(45, 1.9, 30)
    grid, _ = project(g)
    coarse = grid.coarsened(5, TABLE)  # 0.5-m cells: each inside one 1-m square of the checkerboard
    assert coarse.cell == 0.5 and coarse.origin == grid.origin and coarse.classes.shape == (20, 20)
    x = 0.25 + 0.5 * np.arange(20)
    y = -5 + 0.25 + 0.5 * np.arange(20)
    full = coarse.seen & (grid.seen.reshape(20, 5, 20, 5).all((1, 3)))  # every sub-cell in view
    np.testing.assert_array_equal(coarse.classes[full], checker(x[:, None], y[None, :])[full])
