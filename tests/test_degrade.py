"""Camera degradations: the benchmark suite and training's random camera."""

import numpy as np
import pytest
from marsseg.core import degrade as G
from marsseg.train import data as D

from tests.conftest import synthetic_frames


def textured(n: int = 3, seed: int = 0) -> np.ndarray:
    """Frames with terrain-like texture at several scales and mid-range brightness, so every degradation shows."""
    import cv2

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        fine = rng.normal(0, 18, (128, 128))
        coarse = cv2.resize(rng.normal(0, 30, (8, 8)), (128, 128), interpolation=cv2.INTER_CUBIC)
        out.append(np.clip(120 + coarse + cv2.GaussianBlur(fine, (0, 0), 0.7), 0, 255).astype(np.uint8))
    return np.stack(out)


@pytest.mark.parametrize("corruption", G.ALL, ids=lambda c: c.name)
def test_each_corruption_keeps_shape_is_seeded_and_grows_with_severity(corruption):
    frames = textured()
    runs = [G.corrupt_frames(frames, corruption, s, seed=7) for s in (1, 2, 3)]
    for out in runs:
        assert out.shape == frames.shape and out.dtype == np.uint8
    assert np.array_equal(runs[1], G.corrupt_frames(frames, corruption, 2, seed=7))  # same seed, same frames
    change = [np.abs(out.astype(int) - frames).mean() for out in runs]
    assert 0 < change[0] < change[1] < change[2], change  # mean absolute change grows with severity
    other = frames.copy()
    other[0] = 255 - other[0]  # a frame's result does not depend on the other frames evaluated with it
    assert np.array_equal(G.corrupt_frames(other, corruption, 2, seed=7)[1:], runs[1][1:])


def test_random_corruptions_differ_by_seed_and_frame():
    frames = np.repeat(textured(1), 2, axis=0)
    noise = G.BY_NAME["sensor-noise"]
    a, b = G.corrupt_frames(frames, noise, 2, seed=0), G.corrupt_frames(frames, noise, 2, seed=1)
    assert not np.array_equal(a, b)
    assert not np.array_equal(a[0], a[1])  # each frame draws its own noise


def test_blur_removes_high_frequencies_and_sharpening_adds_them():
    frame = textured(1)[0]

    def detail(img):
        return np.abs(np.diff(img.astype(int), axis=1)).mean()

    assert detail(G.gaussian_blur(frame, sigma=1.0)) < detail(G.gaussian_blur(frame, sigma=0.5)) < detail(frame)
    assert detail(G.defocus(frame, radius=2.0)) < detail(G.defocus(frame, radius=1.0)) < detail(frame)
    assert detail(G.sharpen(frame, amount=1.0, sigma=1.0)) > detail(frame)
    smooth = [G.bilateral(frame, sigma_color=c, sigma_space=1.5) for c in (5.0, 20.0, 40.0)]
    assert detail(smooth[2]) < detail(smooth[1]) < detail(smooth[0]) < detail(frame)  # noise reduction flattens
    step = np.where(np.arange(128) < 64, 60, 180).astype(np.uint8)[None].repeat(128, axis=0)  # an edge of 120 levels
    assert np.abs(G.bilateral(step, sigma_color=20.0, sigma_space=1.5).astype(int) - step).max() <= 1  # keeps edges


def test_motion_blur_follows_its_direction():
    frame = textured(1)[0]
    horizontal = G.motion_blur(frame, length=7, angle=0).astype(int)
    vertical = G.motion_blur(frame, length=7, angle=90).astype(int)
    # blurring along x smooths differences along x far more than along y, and the other way round
    assert np.abs(np.diff(horizontal, axis=1)).mean() < 0.7 * np.abs(np.diff(horizontal, axis=0)).mean()
    assert np.abs(np.diff(vertical, axis=0)).mean() < 0.7 * np.abs(np.diff(vertical, axis=1)).mean()
    assert abs(int(horizontal.mean()) - int(frame.mean())) <= 1  # the kernel keeps brightness


def test_vignetting_darkens_corners_not_the_centre():
    flat = np.full((65, 129), 200, np.uint8)
    out = G.vignetting(flat, strength=0.5)
    assert out[32, 64] == 200 and out[0, 0] == 100 and out[64, 128] == 100


def test_sensor_noise_is_signal_dependent():
    rng = np.random.default_rng(0)
    dark, bright = np.full((128, 128), 20, np.uint8), np.full((128, 128), 220, np.uint8)
    sd = [G.sensor_noise(img, rng, full_well=500.0, read=0.0).std() for img in (dark, bright)]
    assert sd[1] > 2 * sd[0]  # shot noise grows as the square root of the signal


def test_augmentation_off_is_identity_and_on_varies_per_frame():
    frames, _ = synthetic_frames(n=40)
    off, touched = D.degrade(frames, np.random.default_rng(0), 0.0)
    assert np.array_equal(off, frames) and not touched.any()
    a, touched = D.degrade(frames, np.random.default_rng(3), 1.0)
    assert a.shape == frames.shape and a.dtype == np.uint8
    assert np.array_equal(a, D.degrade(frames, np.random.default_rng(3), 1.0)[0])  # seeded
    changed = (a != frames).reshape(len(frames), -1).mean(1)
    assert not changed[~touched].any()  # the untouched ones are reported as such
    assert 0.05 < (~touched).mean() < 0.5  # about a quarter pass as they are
    delta = np.abs(a.astype(int) - frames).reshape(len(frames), -1).mean(1)
    assert len(np.unique(np.round(delta[touched], 3))) > 0.9 * touched.sum()  # the rest: each its own camera
    stronger = D.degrade(frames, np.random.default_rng(3), 2.0)[0]
    assert np.abs(stronger.astype(int) - frames).mean() > np.abs(a.astype(int) - frames).mean()


def test_untouched_sets_the_share_of_frames_left_as_they_are():
    from marsseg.train.config import TrainConfig

    frames, _ = synthetic_frames(n=200)
    shares = [(~D.degrade(frames, np.random.default_rng(5), 1.0, u)[1]).mean() for u in (0.0, 0.25, 0.75, 1.0)]
    assert shares[0] == 0 and shares[-1] == 1
    assert 0.15 < shares[1] < 0.35 and 0.65 < shares[2] < 0.85
    with pytest.raises(ValueError, match="untouched"):
        TrainConfig(data={"untouched": 1.5})


def test_training_tiles_are_degraded_before_the_crop(frames_file):
    """The random camera runs on whole frames inside the training data stream, seeded by train_seed."""
    from marsseg.train.fit import TrainTiles

    ds = D.load_dataset(frames_file)
    plain = TrainTiles(ds, phase(), (5, 0))
    cam = TrainTiles(ds, phase(degrade=1.0), (5, 0))
    again = TrainTiles(ds, phase(degrade=1.0), (5, 0))
    for t in (plain, cam, again):
        t[0]  # Keras reads the first batches to learn their shapes before the first epoch
    first = cam.epoch
    cam.on_epoch_begin()
    assert cam.epoch is first  # the peek came from epoch 0's tiles (with a teacher, remaking costs a full pass)
    assert np.array_equal(cam.epoch[0], again.epoch[0]) and cam.epoch[0].shape == plain.epoch[0].shape
    assert not np.array_equal(cam.epoch[0], plain.epoch[0])
    assert np.array_equal(ds.frames, D.load_dataset(frames_file).frames)  # the dataset itself is not touched
    cam.on_epoch_end()
    cam.on_epoch_begin()
    assert cam.epoch is not first  # the next epoch gets new crops and cameras
    resumed = TrainTiles(ds, phase(degrade=1.0), (5, 0), first_epoch=1)
    resumed.on_epoch_begin()
    assert np.array_equal(resumed.epoch[0], cam.epoch[0])  # epoch 1 is epoch 1, resumed or not


def phase(batch_size: int = 8, **data):
    """A training phase with these data (augmentation) settings; distillation on when a camera unlabels frames."""
    from marsseg.train.config import DataConfig, OptimConfig, Phase, QuantConfig

    distill = 1.0 if data.get("camera_labels", 1.0) < 1 else 0.0
    return Phase("test", DataConfig(**data), OptimConfig(batch_size=batch_size, distill=distill), QuantConfig())


def band_teacher():
    """A 'model' that knows the synthetic frames' rule (class = brightness // 50), as one-hot probabilities."""
    import keras
    from keras import ops

    inp = keras.Input((64, 128, 1))
    bands = keras.layers.Lambda(lambda x: ops.one_hot(
        ops.cast(ops.clip(ops.floor(x[..., 0] * 255.0 / 50.0), 0, 4), "int32"), 5))(inp)
    return keras.Model(inp, bands)


def test_distillation_targets_are_the_teachers_answers_on_the_same_clean_crop(frames_file):
    from marsseg.train.fit import TrainTiles

    ds = D.load_dataset(frames_file)
    tiles = TrainTiles(ds, phase(degrade=1.0, photometric=0.3), (1, 0), band_teacher())
    x, y = tiles[0]
    assert x.shape == (8, 64, 128, 1) and y.shape == (8, 64, 128, 6)
    labels, soft = y[..., 0], y[..., 1:]
    # the teacher saw the clean frame cropped and flipped like the labels, not the degraded input
    assert np.array_equal(soft.argmax(-1), labels)
    assert not np.array_equal((tiles.epoch[0] // 50).clip(0, 4), tiles.epoch[1])  # while the model's input was changed


def test_distillation_loss_adds_the_gap_to_the_teacher():
    from marsseg.train.losses import make_loss, with_distillation

    rng = np.random.default_rng(0)
    labels = rng.integers(1, 5, (2, 8, 8)).astype(np.float32)
    student = rng.dirichlet(np.ones(5), (2, 8, 8)).astype(np.float32)
    base = make_loss("wce", np.array([0, 1, 1, 1, 1], np.float32))
    loss = with_distillation(base, 0.5)
    same = np.concatenate([labels[..., None], student], -1)
    assert float(loss(same, student)) == pytest.approx(float(base(labels, student)), abs=1e-5)  # no gap, no term
    other = np.concatenate([labels[..., None], rng.dirichlet(np.ones(5), (2, 8, 8)).astype(np.float32)], -1)
    assert float(loss(other, student)) > float(base(labels, student)) + 0.05


def test_distillation_needs_a_model_to_learn_from():
    from marsseg.train.config import TrainConfig

    with pytest.raises(ValueError, match="distill need a start model"):
        TrainConfig(optim={"distill": 1.0})
    later = {"name": "camera", "optim": {"distill": 1.0, "freeze_bn": True}, "data": {"degrade": 1.0}}
    assert TrainConfig(phases=({"name": "clean"}, later)).phase_configs()[1].optim.distill == 1.0  # the phase before
    assert TrainConfig(optim={"distill": 1.0, "teacher": "t.keras"}).phase_configs()[0].optim.teacher == "t.keras"
    with pytest.raises(ValueError, match=r"optim\.teacher is only read with optim\.distill"):
        TrainConfig(optim={"teacher": "t.keras"}).phase_configs()


def test_camera_labels_leaves_changed_frames_to_the_teacher(frames_file):
    """camera_labels=0: frames a camera changed lose their labels (background, ignored by the loss); untouched
    frames keep theirs, so the label loss sees only the training file's camera and the teacher the rest."""
    from marsseg.train.config import TrainConfig
    from marsseg.train.fit import TrainTiles

    ds = D.load_dataset(frames_file)
    all_labels = TrainTiles(ds, phase(degrade=1.0), (5, 0))
    clean_only = TrainTiles(ds, phase(degrade=1.0, camera_labels=0.0), (5, 0))
    for t in (all_labels, clean_only):
        t.on_epoch_begin()
    x, y = all_labels.epoch[0], all_labels.epoch[1]
    x0, y0 = clean_only.epoch[0], clean_only.epoch[1]
    assert np.array_equal(x, x0)  # the same frames and crops: only the labels differ
    kept = (y0 > 0).any(axis=(1, 2))
    assert 0 < kept.mean() < 0.6 and np.array_equal(y0[kept], y[kept])
    with pytest.raises(ValueError, match="camera_labels"):
        TrainConfig(data={"camera_labels": 0.5})  # no camera, no teacher: nothing would learn from those frames
