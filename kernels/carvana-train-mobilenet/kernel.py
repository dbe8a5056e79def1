"""Kaggle kernel: train the MobileNetV2 U-Net on the competition data into /kaggle/working/run.

Built into one self-contained script by `carvana kernels build`; the `carvana` package is
embedded there. Settings are the constants below; every TrainConfig field can be overridden
by an environment variable CARVANA_<FIELD> (CARVANA_EPOCHS=1, CARVANA_IMAGE_SIZE=32x48, ...),
which is how the tests run this script tiny. CARVANA_EVALUATE=0 skips the evaluation.
"""

import json
import os
import time

from carvana.config import TrainConfig
from carvana.dataset import CarvanaData, competition_dir, working_dir
from carvana.kernels import config_from_env
from carvana.train import train

# 320x480 is 1/4 of 1280x1918: the JPEGs decode straight at that scale (jpeg_ratio 4).
# ImageNet weights are downloaded, so kernel-metadata.json turns the kernel's internet on.
CONFIG = TrainConfig(
    model="mobilenet",
    image_size=(320, 480),
    weights="imagenet",
    epochs=30,
    batch_size=16,
    learning_rate=1e-3,
    patience=6,
    augment=True,
)


def main():
    began = time.time()
    data = CarvanaData(competition_dir())
    config = config_from_env(CONFIG.replace(original_size=data.image_size()))
    run_dir = working_dir() / "run"
    print(f"training {config.model} at {config.image_size} for up to {config.epochs} epochs")
    summary = train(data, config, run_dir, resume=True)
    print(f"run folder: {run_dir}  best validation Dice: {summary['best_val_dice']:.4f}")
    if os.environ.get("CARVANA_EVALUATE", "1") != "0":
        try:
            from carvana.evaluate import evaluate
        except ModuleNotFoundError as err:
            if err.name != "carvana.evaluate":
                raise
            print("carvana.evaluate is not in this build; skipping the evaluation")
        else:
            result = evaluate(data, run_dir, working_dir() / "evaluation")
            summary["full_resolution_dice"] = result["dice"]
            print(f"full-resolution Dice on the validation cars: {result['dice']:.4f}")
    summary["minutes"] = round((time.time() - began) / 60, 1)
    (working_dir() / "train-summary.json").write_text(json.dumps(summary, indent=2, default=str))
    print(f"done in {summary['minutes']} min")


main()
