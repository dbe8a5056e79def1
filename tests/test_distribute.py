"""Two replicas and mixed precision on CPU: strategy and precision choice, and tiny runs that
must learn in inference mode and resume across setups (in a subprocess that splits the CPU)."""

import json
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from carvana.config import TrainConfig
from carvana.distribute import dtype_policy, pick_strategy, resolve_jit, resolve_precision
from carvana.files import CarvanaData
from carvana.inputs import get_dataset
from carvana.metrics import DiceMetric
from carvana.models import load_model
from carvana.train import choose_cars

SCRIPT = Path(__file__).with_name("two_replicas.py")
# Batch 5 does not divide by 2 replicas (fed as 6), and neither 5 nor 6 divides the 80
# training images: every epoch ends with a partial batch.
TINY = TrainConfig(
    model="cnn",
    image_size=(32, 48),
    batch_size=5,
    learning_rate=3e-3,
    epochs=4,
    patience=4,
    progressive="",  # one stage: progressive resizing and augment_until have tests of their own
    augment_until=1.0,
)


def test_precision_and_jit_on_a_machine_without_gpu(monkeypatch):
    import carvana.distribute as distribute

    for native, expected in ((False, "float32"), (True, "mixed_bfloat16")):
        monkeypatch.setattr(distribute, "cpu_has_bf16", lambda native=native: native)
        assert resolve_precision("auto") == expected
    assert resolve_precision("mixed_float16") == "mixed_float16"
    with pytest.raises(ValueError, match="auto, float32, mixed_float16, mixed_bfloat16"):
        resolve_precision("float16")
    assert resolve_jit("auto") is False and resolve_jit(True) is True
    assert pick_strategy().num_replicas_in_sync == 1


def test_bfloat16_is_read_from_the_cpu_flags(tmp_path):
    from carvana.distribute import cpu_has_bf16

    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx512f avx512_bf16 avx512_vnni\n")
    assert cpu_has_bf16(str(info))
    info.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f\n")
    assert not cpu_has_bf16(str(info))
    assert not cpu_has_bf16(str(tmp_path / "missing"))


FREED_TWICE = """
import resource, sys
import numpy as np
from carvana.distribute import keep_freed_memory

def faults():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(5):
        block = np.ones(64 << 20, np.uint8)  # an activation-sized block, freed at once
        del block
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

default = faults()
kept = keep_freed_memory()
faults()  # the first round grows the heap
print(kept, default, faults())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_kept_memory_is_reused_without_page_faults():
    # In a fresh interpreter: the setting lasts for the process.
    out = subprocess.run(
        [sys.executable, "-c", FREED_TWICE], capture_output=True, text=True, check=True
    ).stdout.split()
    kept, default, after = out[0] == "True", int(out[1]), int(out[2])
    assert kept
    assert default >= 100  # each 64 MB block mapped afresh: 16,384 pages, or 32 huge pages
    assert after < default / 10


def test_kept_memory_is_glibc_only(monkeypatch):
    from carvana import distribute

    monkeypatch.setattr(distribute.platform, "libc_ver", lambda: ("", ""))
    assert distribute.keep_freed_memory() is False


def test_memory_is_kept_on_a_cpu_unless_switched_off(monkeypatch):
    from carvana import distribute

    calls = []
    monkeypatch.setattr(distribute, "keep_freed_memory", lambda: calls.append("kept") or True)
    monkeypatch.setattr(distribute, "has_gpu", lambda: False)
    monkeypatch.setenv(distribute.KEEP_FREED_ENV, "0")
    assert distribute.keep_freed_memory_on_cpu() is False
    monkeypatch.delenv(distribute.KEEP_FREED_ENV)
    assert distribute.keep_freed_memory_on_cpu() is True
    monkeypatch.setattr(distribute, "has_gpu", lambda: True)
    assert distribute.keep_freed_memory_on_cpu() is False
    assert calls == ["kept"]


def test_a_bfloat16_run_exports_a_float32_model_that_scores_what_it_recorded(synth_dirs, tmp_path):
    from carvana.train import train

    data = CarvanaData(synth_dirs["folders"])
    summary = train(
        data, TINY.replace(epochs=3), tmp_path / "run", verbose=0, precision="mixed_bfloat16"
    )
    # Validation ran in bfloat16, the export is float32: a few logits near 0 may differ.
    assert _val_dice(data, tmp_path / "run") == pytest.approx(summary["best_val_dice"], abs=5e-3)
    assert summary["best_val_dice"] > 0.5


def test_batches_fit_the_replicas():
    import tensorflow as tf

    from carvana.distribute import global_batch, whole_for_replicas

    assert [global_batch(b, 2) for b in (1, 5, 8)] == [2, 6, 8] and global_batch(7, 1) == 7
    assert resolve_jit(True, replicas=2) is False  # Keras cannot XLA-compile strategy.run
    # 13 images in batches of 4 leave a last batch of 1: no share for a second replica.
    ds = tf.data.Dataset.from_tensor_slices((np.zeros((13, 1)), np.zeros((13, 1)))).batch(4)
    kept = whole_for_replicas(ds, 13, 4, 2)
    assert [len(x) for x, _ in kept] == [4, 4, 4] and int(kept.cardinality()) == 3
    assert whole_for_replicas(ds, 13, 4, 1) is ds


def test_dtype_policy_is_restored_even_after_an_error():
    before = keras.mixed_precision.dtype_policy().name
    with pytest.raises(RuntimeError), dtype_policy("mixed_float16"):
        assert keras.mixed_precision.dtype_policy().name == "mixed_float16"
        raise RuntimeError
    assert keras.mixed_precision.dtype_policy().name == before


def _val_dice(data, run) -> float:
    """Inference-mode Dice of a run's model.keras on its validation cars, in this process."""
    config = TrainConfig.load(run)  # with the detected original size: the same decoding
    _, val_ids = choose_cars(data.train_ids(), config)
    model, metric = load_model(run), DiceMetric()
    assert {v.dtype for v in model.weights} == {"float32"}
    for x, y in get_dataset(data, val_ids, config, training=False, cache=None):
        out = model.predict_on_batch(x)
        assert out.dtype == np.float32
        metric.update_state(y, out)
    return float(metric.result())


@pytest.mark.slow
def test_two_replicas_and_mixed_precision_learn_and_resume_across(synth_dirs, tmp_path):
    data = CarvanaData(synth_dirs["folders"])
    config = json.dumps(TINY.to_dict())
    done = subprocess.run(
        [sys.executable, str(SCRIPT), str(synth_dirs["folders"]), str(tmp_path), config],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    runs = json.loads(done.stdout.strip().splitlines()[-1])
    # Recalibration assigns every replica's copy of a mirrored moving mean: (1 + 5) / 2.
    assert runs.pop("recalibrated") == [3.0, 3.0]
    # Swapping the weights with their average (TrainConfig.ema) writes every replica's copy.
    assert runs.pop("swapped") == {"weight": [5.0, 5.0], "average": [2.0, 2.0]}
    one = [r["val_dice"] for r in runs["1-float32"]["history"]]
    two = [r["val_dice"] for r in runs["2-mixed"]["history"]]
    # Before the fix the 2-replica mixed-precision run scored 0.0000 (empty masks) in
    # inference mode. Predicting "car" everywhere scores ~0.2 and background 0: a model that
    # learned must find the outline. 0.1 is the spread between runs of the same setup with
    # other seeds at this size (batch statistics over 3-4 images per replica instead of 7).
    assert min(two[1:]) > 0.6, (one, two)
    assert max(two) > max(one) - 0.1, (one, two)
    assert all(abs(a - b) < 0.15 for a, b in zip(one[1:], two[1:], strict=True)), (one, two)
    for name in ("1-float32", "2-mixed"):
        # Each checkpoint resumed on the other setup: one more epoch, earlier rows kept, and
        # the optimizer state carried over (the loss goes on from where it was).
        resumed = runs[f"{name}-resumed"]
        # The exported best model is float32 and, loaded here on one CPU device, scores what
        # the run recorded (a mixed run validated in float16: a few logits may differ).
        assert _val_dice(data, tmp_path / name) == pytest.approx(
            resumed["summary"]["best_val_dice"], abs=2e-3
        )
        assert resumed["summary"]["epochs_run"] == TINY.epochs + 1
        assert resumed["history"][: TINY.epochs] == runs[name]["history"]
        last, new = runs[name]["history"][-1], resumed["history"][-1]
        assert new["loss"] < 1.5 * last["loss"] and new["val_dice"] > 0.6, (last, new)


@pytest.mark.slow
def test_progressive_resizing_on_two_replicas_and_across(synth_dirs, tmp_path):
    # The default recipe on Kaggle's 2x T4: one model of any input size, mirrored, two stages.
    config = TINY.replace(image_size=(64, 96), progressive="0.5@0.5")
    done = subprocess.run(
        [sys.executable, str(SCRIPT), str(synth_dirs["folders"]), str(tmp_path),
         json.dumps(config.to_dict())],
        capture_output=True,
        text=True,
        timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    runs = json.loads(done.stdout.strip().splitlines()[-1])
    for name in ("1-float32", "2-mixed"):
        rows, summary = runs[name]["history"], runs[name]["summary"]
        assert [r["epoch"] for r in rows] == [1, 2, 3, 4]
        # The best is one of the 64x96 epochs, and it learned the outline there.
        assert summary["best_epoch"] in (3, 4) and summary["best_val_dice"] > 0.6, rows
        resumed = runs[f"{name}-resumed"]["history"]
        assert resumed[:4] == rows and resumed[-1]["val_dice"] > 0.6, resumed


@pytest.mark.parametrize(
    "first, then",
    [("mixed_float16", "float32"), ("float32", "mixed_float16"), ("mixed_bfloat16", "float32")],
)
def test_checkpoint_restores_weights_and_adam_across_precisions(tmp_path, first, then):
    from carvana.callbacks import Checkpoint, RunState, restore_checkpoint
    from carvana.models import build_model
    from carvana.train import compile_model

    config = TINY.replace(batch_size=2)
    x = np.random.default_rng(0).uniform(0, 255, (2, 32, 64, 3)).astype(np.float32)
    y = (x[..., :1] > 127).astype(np.float32)
    with dtype_policy(first):
        model = build_model(config)
        compile_model(model, config, 10)
        for _ in range(3):
            model.train_on_batch(x, y)
        saver = Checkpoint(tmp_path, RunState())
        saver.set_model(model)
        saver.on_epoch_end(0)
    with dtype_policy(then):
        again = build_model(config)
        compile_model(again, config, 10)
        restore_checkpoint(again, tmp_path)
    # Mixed precision wraps Adam in a LossScaleOptimizer: its inner state is what carries over.
    inner = [getattr(m.optimizer, "inner_optimizer", m.optimizer) for m in (model, again)]
    assert int(inner[1].iterations.numpy()) == 3
    for a, b in zip(inner[0].variables, inner[1].variables, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    for a, b in zip(model.weights, again.weights, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert json.loads((tmp_path / "state.json").read_text())["epoch"] == 1
