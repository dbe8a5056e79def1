"""Kaggle kernel: predict the test set with a train kernel's model into submission.csv.gz.

Built into one self-contained script by `carvana kernels build`. The model is the run folder
(config.json + model.keras) that a train kernel left in its output, attached through
kernel_sources and found under /kaggle/input/. The submission is validated by predict itself.
Every PredictConfig field can be overridden by CARVANA_<FIELD> (CARVANA_SHARD=0/4,
CARVANA_LIMIT=100, CARVANA_THRESHOLD=0.45, ...). With several runs attached, all of them are
averaged as an ensemble unless CARVANA_RUN (or RUN) names some, comma-separated. The threshold
is the run's tuned one (thresholds.json; the mean of the runs' for an ensemble) unless given.
"""

from carvana.config import PredictConfig
from carvana.kernel_runtime import predict_kernel

RUN = ""  # parts of run folders' paths under /kaggle/input, comma-separated; "": all attached
# Kaggle's GPU machines have 4 CPU cores for upscaling and RLE-encoding the masks.
CONFIG = PredictConfig(tta=True, batch_size=32, workers=4)

predict_kernel(CONFIG, run=RUN)
