"""Kaggle kernel: predict the test set with a train kernel's model into submission.csv.gz.

Built into one self-contained script by `carvana kernels build`. The model is the run folder
(config.json + model.keras) that a train kernel left in its output, attached through
kernel_sources and found under /kaggle/input/. The submission is validated by predict itself.
Every PredictConfig field can be overridden by CARVANA_<FIELD> (CARVANA_SHARD=0/4,
CARVANA_LIMIT=100, ...); CARVANA_RUN picks a run folder when several are attached.
"""

from carvana.config import PredictConfig
from carvana.kernel_runtime import predict_kernel

RUN = ""  # part of the run folder's path under /kaggle/input, when several are attached
# Kaggle's GPU machines have 4 CPU cores for upscaling and RLE-encoding the masks.
CONFIG = PredictConfig(threshold=0.5, tta=True, batch_size=32, workers=4)

predict_kernel(CONFIG, run=RUN)
