"""Kaggle kernel: predict the test set with a train kernel's model into submission.csv.gz.

Built into one self-contained script by `carvana kernels build`. The model is the run folder
(config.json + model.keras) that a train kernel left in its output, attached through
kernel_sources and found under /kaggle/input/. The submission is validated by predict itself.
Every PredictConfig field can be overridden by CARVANA_<FIELD> (CARVANA_SHARD=0/4,
CARVANA_LIMIT=100, ...); CARVANA_RUN picks a run folder when several are attached.
"""

import os
import sys

from carvana.config import PredictConfig, from_env
from carvana.files import CarvanaData, competition_dir, working_dir
from carvana.kernel_runtime import find_run
from carvana.predict import predict

RUN = ""  # part of the run folder's path under /kaggle/input, when several are attached
# Kaggle's GPU machines have 4 CPU cores for upscaling and RLE-encoding the masks.
CONFIG = PredictConfig(threshold=0.5, tta=True, batch_size=32, workers=4)


def main():
    run_dir = find_run(name=os.environ.get("CARVANA_RUN", RUN))
    config, _ = from_env(CONFIG)
    i, n = config.shard
    out = working_dir() / ("submission.csv.gz" if n == 1 else f"submission-{i}-of-{n}.csv.gz")
    print(f"model: {run_dir}  output: {out}")
    progress = os.environ.get("CARVANA_PROGRESS", "1") != "0"
    summary = predict(CarvanaData(competition_dir()), run_dir, out, config, progress=progress)
    print(
        f"{out}: {summary['rows']} rows in {summary['seconds']} s, "
        f"{len(summary['bad_images'])} unreadable image(s), {len(summary['problems'])} problem(s)"
    )
    if not summary["ok"]:
        sys.exit(f"{out}: prediction or validation failed; see the messages above")


main()
