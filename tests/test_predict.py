"""Streaming prediction: exact masks, TTA, bad images, rows on disk while running, resume, shards."""

import io
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import cv2
import keras
import numpy as np
import pytest
import tensorflow as tf

import carvana.predict
from carvana import cli, rle
from carvana.config import PredictConfig, TrainConfig
from carvana.edges import refined_levels
from carvana.files import CarvanaData
from carvana.inference import make_forward, predict_masks, upscale_mask
from carvana.inputs import decode_image
from carvana.predict import predict, shard_names
from carvana.submission import merge, read_rows, validate
from carvana.synth import synthesize

CONFIG = TrainConfig(model="cnn", image_size=(32, 48), original_size=(128, 192))  # pads to 32x64
FAST = PredictConfig(batch_size=4, workers=2)


def conv_model(config: TrainConfig) -> keras.Model:
    """A fixed 1x1 convolution: logits = 6 * (green - blue) / 255 + 0.3, not flip-symmetric."""
    ph, pw = config.padded_size
    inputs = keras.Input((ph, pw, 3), name="image")
    x = keras.layers.Rescaling(1 / 255, name="rescale")(inputs)
    conv = keras.layers.Conv2D(1, 1, name="logits")
    outputs = conv(x)
    conv.set_weights([np.array([0.0, 6.0, -6.0], np.float32).reshape(1, 1, 3, 1), np.array([0.3])])
    return keras.Model(inputs, outputs)


def load_hand_made_run(run_dir: Path):
    """(model, config) of a run folder whose model.keras is a hand-made Keras model: Keras
    deserializes it (models.load_model rebuilds a kit architecture from config.json)."""
    return keras.models.load_model(Path(run_dir) / "model.keras"), TrainConfig.load(run_dir)


@pytest.fixture(autouse=True)
def hand_made_models(monkeypatch):
    monkeypatch.setattr(carvana.predict, "load_run", load_hand_made_run)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("run")
    CONFIG.save(path)
    conv_model(CONFIG).save(path / "model.keras")
    return path


@pytest.fixture(scope="module")
def stream_data(tmp_path_factory) -> CarvanaData:
    """48 test images: enough for several batches to be in flight."""
    root = tmp_path_factory.mktemp("stream")
    return CarvanaData(synthesize(root, train_cars=1, test_images=48, size=(128, 192), seed=3))


def by_hand(data: CarvanaData, names, threshold=0.5, guided=True):
    """Rows computed without predict: decode, model, crop, round to uint8, cv2 upscale (through
    the edge filter when `guided`, as predict does by default), >."""
    model = conv_model(CONFIG)
    h, w = CONFIG.image_size
    rows = {}
    for name in names:
        jpeg = data.read_test_bytes(name)
        image = decode_image(tf.constant(jpeg), CONFIG).numpy()
        logits = model(image[None].astype(np.float32)).numpy()[0, :h, :w, 0]
        prob = 1 / (1 + np.exp(-logits.astype(np.float64)))
        small = np.round(prob * 255).astype(np.uint8)
        H, W = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_GRAYSCALE).shape
        if guided:
            up = refined_levels((small,), (H, W), jpeg)
        else:
            up = cv2.resize(small, (W, H), interpolation=cv2.INTER_LINEAR)
        rows[name] = rle.encode(up > threshold * 255)
    return rows


@pytest.fixture(scope="module")
def reference(synth_dirs) -> dict[str, str]:
    data = CarvanaData(synth_dirs["zipped"])
    return by_hand(data, data.test_names())


def rows_of(path) -> list[tuple[str, str]]:
    return list(read_rows(path))


# -- post-processing and the engine -------------------------------------------------------------
def test_upscale_mask_is_bilinear_then_strictly_above_threshold():
    prob = np.array([[0, 255]], np.uint8)  # cv2 bilinear x2 gives 0, 64, 191, 255
    assert upscale_mask(prob, (1, 4), 0.5).tolist() == [[0, 0, 1, 1]]
    assert upscale_mask(prob, (1, 4), 0.2).tolist() == [[0, 1, 1, 1]]
    assert upscale_mask(prob, (1, 4), 0.8).tolist() == [[0, 0, 0, 1]]
    assert upscale_mask(np.full((2, 2), 128, np.uint8), (3, 5), 0.5).sum() == 15  # 128 > 127.5


def test_tta_averages_with_the_unflipped_prediction_of_the_flipped_image():
    ph, pw = CONFIG.padded_size
    h, w = CONFIG.image_size

    def f(x):  # a column ramp plus an image-dependent term: flips change it
        ramp = np.arange(pw, dtype=np.float32)[None, None, :, None] * 0.1 - 2.4
        return ramp + 0.02 * (x.mean(axis=-1, keepdims=True) - 128)

    inputs = keras.Input((ph, pw, 3))
    ramp = keras.ops.reshape(keras.ops.arange(pw, dtype="float32"), (1, 1, pw, 1)) * 0.1 - 2.4
    outputs = keras.layers.Lambda(
        lambda x: ramp + 0.02 * (keras.ops.mean(x, axis=-1, keepdims=True) - 128)
    )(inputs)
    model = keras.Model(inputs, outputs)
    images = np.random.default_rng(0).integers(0, 256, (3, ph, pw, 3), dtype=np.uint8)
    images[:, h:], images[:, :, w:] = 0, 0  # decode_image pads with zeros
    x = images.astype(np.float32)
    sigmoid = lambda v: 1 / (1 + np.exp(-v.astype(np.float64)))  # noqa: E731
    plain = sigmoid(f(x))[:, :h, :w, 0]
    flipped = x.copy()
    flipped[:, :, :w] = x[:, :, :w][:, :, ::-1]  # the image flips, its padding stays right
    expected = (plain + sigmoid(f(flipped))[:, :h, :w, 0][:, :, ::-1]) / 2

    got = make_forward(model, CONFIG, tta=True)(images).numpy()
    assert np.abs(got.astype(int) - np.round(expected * 255)).max() <= 1
    assert (got == np.round(expected * 255)).mean() > 0.99
    no_tta = make_forward(model, CONFIG, tta=False)(images).numpy()
    assert np.abs(no_tta.astype(int) - np.round(plain * 255)).max() <= 1
    assert np.abs(no_tta.astype(int) - got).max() > 50  # the ramp makes TTA matter
    whole = (plain + sigmoid(f(x[:, :, ::-1]))[:, :h, ::-1][:, :, :w, 0]) / 2  # naive flip
    assert np.abs(got.astype(int) - np.round(whole * 255)).max() > 10


def test_predict_masks_streams_in_order_and_reports_bad_images(synth_dirs, reference):
    data = CarvanaData(synth_dirs["zipped"])
    names = data.test_names()
    jpeg = data.read_test_bytes(names[0])
    items = [(n, data.read_test_bytes(n)) for n in names]
    items.insert(2, ("empty.jpg", b""))
    items.insert(5, ("cut.jpg", jpeg[: len(jpeg) // 2]))  # header fine, decoding fails in TF
    items.append(("text.jpg", b"not a jpeg at all"))
    errors = {}
    model = conv_model(CONFIG)
    out = list(predict_masks(model, CONFIG, iter(items), FAST, encode=True, errors=errors))
    assert [n for n, _ in out] == [n for n, _ in items]
    assert {n for n, r in out if r is None} == {"empty.jpg", "cut.jpg", "text.jpg"} == set(errors)
    assert "Invalid JPEG data" in errors["cut.jpg"] and "not a readable" in errors["empty.jpg"]
    assert {n: r for n, r in out if r is not None} == reference
    masks = dict(predict_masks(model, CONFIG, items[:3], FAST, encode=False))
    assert masks[names[0]].shape == (128, 192) and masks[names[0]].dtype == np.uint8
    assert rle.encode(masks[names[0]]) == reference[names[0]] and masks["empty.jpg"] is None


def test_predict_masks_passes_on_a_failing_input_iterable(synth_dirs):
    data = CarvanaData(synth_dirs["folders"])

    def items():
        for name in data.test_names()[:3]:
            yield name, data.read_test_bytes(name)
        raise OSError("disk went away")

    seen = []
    with pytest.raises(OSError, match="disk went away"):
        for name, _ in predict_masks(conv_model(CONFIG), CONFIG, items(), FAST, encode=True):
            seen.append(name)
    assert seen == data.test_names()[:3]


# -- predict over the test set ------------------------------------------------------------------
def test_predict_equals_the_direct_computation(synth_dirs, run_dir, reference, tmp_path):
    data = CarvanaData(synth_dirs["zipped"])
    out = tmp_path / "submission.csv.gz"
    summary = predict(data, run_dir, out, PredictConfig(batch_size=5), progress=False)
    assert summary["ok"] and summary["rows"] == 12 and summary["bad_images"] == []
    assert rows_of(out) == sorted(reference.items())
    assert validate(out, data) == []
    plain = tmp_path / "plain.csv.gz"
    predict(data, run_dir, plain, PredictConfig(batch_size=5, guided=False), progress=False)
    assert rows_of(plain) == sorted(by_hand(data, data.test_names(), guided=False).items())
    assert rows_of(plain) != rows_of(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plain.csv.gz", "submission.csv.gz"]
    # uint8 probabilities change at most a few boundary pixels against float upscaling
    name, text = rows_of(out)[0]
    image = decode_image(tf.constant(data.read_test_bytes(name)), CONFIG).numpy()
    logits = conv_model(CONFIG)(image[None].astype(np.float32)).numpy()[0, :32, :48, 0]
    prob = cv2.resize(1 / (1 + np.exp(-logits)), (192, 128), interpolation=cv2.INTER_LINEAR)
    assert rle.dice(rle.decode(text, (128, 192)), prob > 0.5) > 0.99


def test_rows_reach_the_file_while_the_run_goes(stream_data, run_dir, tmp_path, monkeypatch):
    out = tmp_path / "sub.csv.gz"
    partial = out.with_name(out.name + ".partial")
    on_disk = []
    read = stream_data.read_test_bytes

    def reading(name):
        on_disk.append(len(list(read_rows(partial, strict=False))) if partial.exists() else 0)
        return read(name)

    monkeypatch.setattr(stream_data, "read_test_bytes", reading)
    summary = predict(stream_data, run_dir, out, FAST, progress=False)
    assert summary["ok"] and summary["rows"] == 48
    assert any(0 < n < 48 for n in on_disk), on_disk  # rows written before the last read


def test_resume_after_interrupt_and_truncation_gives_exactly_once_rows(
    stream_data, run_dir, tmp_path, monkeypatch
):
    full = tmp_path / "full.csv.gz"
    expected = rows_of(predict(stream_data, run_dir, full, FAST, progress=False)["path"])
    out = tmp_path / "sub.csv.gz"
    partial = out.with_name(out.name + ".partial")
    read, calls = stream_data.read_test_bytes, []

    def interrupted(name):
        calls.append(name)
        if len(calls) == 30:
            raise KeyboardInterrupt
        return read(name)

    monkeypatch.setattr(stream_data, "read_test_bytes", interrupted)
    with pytest.raises(KeyboardInterrupt):
        predict(stream_data, run_dir, out, FAST, progress=False)
    monkeypatch.setattr(stream_data, "read_test_bytes", read)
    assert not out.exists() and partial.exists()
    kept = rows_of(partial)
    assert 0 < len(kept) < 48 and kept == expected[: len(kept)]
    partial.write_bytes(partial.read_bytes()[:-300])  # cut into the last rows' deflate data
    with pytest.raises(ValueError, match="other settings"):
        predict(stream_data, run_dir, out, PredictConfig(threshold=0.6), progress=False)
    summary = predict(stream_data, run_dir, out, FAST, progress=False)
    assert summary["ok"] and 0 < summary["resumed"] < len(kept)
    assert summary["resumed"] + summary["predicted"] == 48
    assert rows_of(out) == expected
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full.csv.gz", "sub.csv.gz"]


def test_killed_while_validating_the_rerun_only_validates(
    synth_dirs, run_dir, reference, tmp_path, monkeypatch
):
    data = CarvanaData(synth_dirs["zipped"])
    out = tmp_path / "sub.csv.gz"

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(carvana.predict, "validate", killed)
    with pytest.raises(KeyboardInterrupt):
        predict(data, run_dir, out, FAST, progress=False)
    monkeypatch.setattr(carvana.predict, "validate", validate)
    assert rows_of(out) == sorted(reference.items())  # complete, renamed, not yet validated
    again = predict(data, run_dir, out, FAST, progress=False)
    assert again["ok"] and again["predicted"] == 0 and again["rows"] == 12
    fresh = predict(data, run_dir, out, FAST, progress=False)  # a finished file is redone
    assert fresh["ok"] and fresh["predicted"] == 12
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sub.csv.gz"]


def test_shards_merged_equal_the_unsharded_run(synth_dirs, run_dir, reference, tmp_path):
    data = CarvanaData(synth_dirs["zipped"])
    names = data.test_names()
    parts = []
    for i in range(3):
        assert shard_names(names, (i, 3)) == names[i::3]
        out = tmp_path / f"part{i}.csv.gz"
        summary = predict(data, run_dir, out, PredictConfig(shard=(i, 3)), progress=False)
        assert summary["ok"] and summary["rows"] == 4
        parts.append(out)
    merged = tmp_path / "merged.csv.gz"
    assert merge(parts, merged, data=data)["rows"] == 12
    assert sorted(rows_of(merged)) == sorted(reference.items())
    assert validate(merged, data) == []
    assert shard_names(names, (1, 3), limit=2) == [names[1], names[4]]


def test_corrupt_image_gives_an_empty_row_and_a_failing_exit(
    synth_copy, run_dir, reference, tmp_path, capsys
):
    root = synth_copy("folders")
    names = CarvanaData(root).test_names()
    jpeg = (root / "test" / names[3]).read_bytes()
    (root / "test" / names[3]).write_bytes(jpeg[:500])
    (root / "test" / names[7]).write_bytes(b"")
    out = tmp_path / "sub.csv.gz"
    summary = predict(CarvanaData(root), run_dir, out, FAST)
    assert not summary["ok"] and summary["bad_images"] == [names[3], names[7]]
    rows = dict(rows_of(out))
    assert rows[names[3]] == rows[names[7]] == "" and len(rows) == 12
    assert {n: r for n, r in rows.items() if r} == {
        n: r for n, r in reference.items() if n not in (names[3], names[7])
    }
    err = capsys.readouterr().err
    assert f"{names[3]}: not a readable" in err and "2 bad image(s)" in err
    allowed = predict(CarvanaData(root), run_dir, out, FAST, allow_bad_images=True)
    assert allowed["ok"] and allowed["bad_images"] == [names[3], names[7]]

    argv = ["predict", "--data", str(root), "--run", str(run_dir), "--out", str(out)]
    assert cli.main(argv + ["--batch-size", "4", "--limit", "3"]) == 0
    assert len(rows_of(out)) == 3
    assert cli.main(argv + ["--batch-size", "4"]) == 1
    assert cli.main(argv + ["--batch-size", "4", "--allow-bad-images"]) == 0
    assert cli.main(argv[:3] + ["--run", str(tmp_path / "nope"), "--out", str(out)]) == 2
    assert "no config.json" in capsys.readouterr().err


KILLED_RUN = """
import sys, time
from pathlib import Path
from carvana.config import PredictConfig
from carvana.files import CarvanaData
from carvana.predict import predict
import carvana.predict, keras
from carvana.config import TrainConfig

carvana.predict.load_run = lambda run: (
    keras.models.load_model(run / "model.keras"), TrainConfig.load(run)
)
data = CarvanaData(sys.argv[1])
read = data.read_test_bytes
data.read_test_bytes = lambda name: (time.sleep(0.1), read(name))[1]
predict(data, Path(sys.argv[2]), Path(sys.argv[3]), PredictConfig(batch_size=2), progress=False)
"""


@pytest.mark.slow
def test_sigkill_mid_run_then_the_same_command_resumes(stream_data, run_dir, tmp_path):
    out = tmp_path / "sub.csv.gz"
    partial = out.with_name(out.name + ".partial")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    argv = [sys.executable, "-c", KILLED_RUN, str(stream_data.root), str(run_dir), str(out)]
    proc = subprocess.Popen(argv, env=env, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if partial.exists() and len(list(read_rows(partial, strict=False))) >= 6:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the run ended before it could be killed"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    kept = list(read_rows(partial, strict=False))
    assert 6 <= len(kept) < 48 and not out.exists()
    summary = predict(stream_data, run_dir, out, PredictConfig(batch_size=2), progress=False)
    assert summary["ok"] and summary["resumed"] >= 6
    assert rows_of(out) == sorted(by_hand(stream_data, stream_data.test_names()).items())


# -- resume keyed on what the output depends on, one writer per output, bad headers ------------
def claim_size(jpeg: bytes, height: int, width: int) -> bytes:
    """The JPEG with its frame header (SOF0/SOF2) claiming another size; the data unchanged."""
    at = max(jpeg.find(b"\xff\xc0"), jpeg.find(b"\xff\xc2"))
    assert at > 0, "no frame header"
    return jpeg[: at + 5] + struct.pack(">HH", height, width) + jpeg[at + 9 :]


def interrupt_after(monkeypatch, data, reads: int):
    """Make the `reads`-th test image read raise KeyboardInterrupt; returns an undo function."""
    read, calls = data.read_test_bytes, []

    def interrupted(name):
        calls.append(name)
        if len(calls) == reads:
            raise KeyboardInterrupt
        return read(name)

    monkeypatch.setattr(data, "read_test_bytes", interrupted)
    return lambda: monkeypatch.setattr(data, "read_test_bytes", read)


def interrupted_run(stream_data, run_dir, out, monkeypatch) -> list:
    undo = interrupt_after(monkeypatch, stream_data, 30)
    with pytest.raises(KeyboardInterrupt):
        predict(stream_data, run_dir, out, FAST, progress=False)
    undo()
    partial = out.with_name(out.name + ".partial")
    kept = rows_of(partial)
    assert 0 < len(kept) < 48
    return kept


def test_resume_refuses_another_model_of_the_same_size(stream_data, run_dir, tmp_path, monkeypatch):
    out = tmp_path / "sub.csv.gz"
    kept = interrupted_run(stream_data, run_dir, out, monkeypatch)
    model_file = run_dir / "model.keras"
    before = model_file.read_bytes()
    other = conv_model(CONFIG)
    other.get_layer("logits").set_weights(
        [np.array([0.0, 5.0, -6.0], np.float32).reshape(1, 1, 3, 1), np.array([0.1])]
    )
    other.save(tmp_path / "other.keras")
    try:
        # The other weights in the original archive: only the saving date would change its size.
        with (
            zipfile.ZipFile(io.BytesIO(before)) as original,
            zipfile.ZipFile(tmp_path / "other.keras") as changed,
            zipfile.ZipFile(model_file, "w") as target,
        ):
            for info in original.infolist():
                source = changed if info.filename.endswith(".h5") else original
                target.writestr(info, source.read(info.filename))
        assert model_file.stat().st_size == len(before) and model_file.read_bytes() != before
        with pytest.raises(ValueError, match=r"model\.keras content differs.*another --out"):
            predict(stream_data, run_dir, out, FAST, progress=False)
    finally:
        model_file.write_bytes(before)
    assert rows_of(out.with_name(out.name + ".partial")) == kept  # untouched
    other_run = tmp_path / "copy-of-run"
    shutil.copytree(run_dir, other_run)
    with pytest.raises(ValueError, match="run folder differs"):
        predict(stream_data, other_run, out, FAST, progress=False)
    summary = predict(stream_data, run_dir, out, FAST, progress=False)
    assert summary["ok"] and summary["resumed"] == len(kept) and summary["rows"] == 48


def test_a_limited_rerun_keeps_the_interrupted_full_run(
    stream_data, run_dir, tmp_path, monkeypatch
):
    out = tmp_path / "sub.csv.gz"
    kept = interrupted_run(stream_data, run_dir, out, monkeypatch)
    partial = out.with_name(out.name + ".partial")
    with pytest.raises(ValueError, match=r"limit 0 -> 10.*delete"):
        predict(stream_data, run_dir, out, PredictConfig(batch_size=4, limit=10), progress=False)
    assert rows_of(partial) == kept
    with pytest.raises(ValueError, match=r"threshold 0\.5 -> 0\.6"):
        predict(stream_data, run_dir, out, PredictConfig(threshold=0.6), progress=False)
    assert rows_of(partial) == kept


@pytest.mark.parametrize("content", ["", "{not json", '{"key": 1}', "[]"])
def test_an_unreadable_resume_state_is_one_clear_line(synth_dirs, run_dir, tmp_path, content):
    data = CarvanaData(synth_dirs["folders"])
    out = tmp_path / "sub.csv.gz"
    state = out.with_name(out.name + ".partial.json")
    state.write_text(content)
    out.with_name(out.name + ".partial").write_bytes(b"")
    with pytest.raises(ValueError, match=r"sub\.csv\.gz\.partial\.json: not a readable resume"):
        predict(data, run_dir, out, FAST, progress=False)
    assert state.read_text() == content


def test_a_second_predict_on_the_same_out_refuses_while_the_first_runs(
    synth_dirs, run_dir, tmp_path
):
    import fcntl

    data = CarvanaData(synth_dirs["folders"])
    out = tmp_path / "sub.csv.gz"
    lock = out.with_name(out.name + ".lock")
    with open(lock, "w") as held:  # what a running predict holds
        held.write("4242\n")
        held.flush()
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(ValueError, match=r"sub\.csv\.gz.*in use by process 4242"):
            predict(data, run_dir, out, FAST, progress=False)
    assert not out.exists()
    lock.write_text("999999999\n")  # a run that died: nobody holds the lock
    summary = predict(data, run_dir, out, FAST, progress=False)
    assert summary["ok"] and summary["rows"] == 12
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sub.csv.gz"]


def test_a_header_claiming_an_absurd_size_is_an_empty_row(synth_copy, run_dir, tmp_path):
    root = synth_copy("folders")
    names = CarvanaData(root).test_names()
    path = root / "test" / names[2]
    path.write_bytes(claim_size(path.read_bytes(), 65000, 65000))
    out = tmp_path / "sub.csv.gz"
    summary = predict(CarvanaData(root), run_dir, out, FAST, progress=False)
    assert not summary["ok"] and summary["bad_images"] == [names[2]]
    assert "65000" in summary["bad_reasons"][names[2]]
    rows = dict(rows_of(out))
    assert rows[names[2]] == "" and len(rows) == 12 and all(rows[n] for n in names if n != names[2])
    again = predict(CarvanaData(root), run_dir, out, FAST, allow_bad_images=True, progress=False)
    assert again["ok"] and again["bad_images"] == [names[2]]


def test_a_resume_key_saved_before_the_edge_filter_stands_for_unfiltered_rows(run_dir):
    from carvana.predict import key_differences, resume_key

    now = resume_key([run_dir], PredictConfig())
    older = {k: v for k, v in now.items() if k != "guided"}
    assert key_differences(older, now) == ["guided False -> True"]
    assert key_differences(older, resume_key([run_dir], PredictConfig(guided=False))) == []
