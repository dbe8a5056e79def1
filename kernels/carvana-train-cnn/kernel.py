"""Kaggle kernel: train the from-scratch CNN on the competition data into /kaggle/working/run.

Built into one self-contained script by `carvana kernels build`; the `carvana` package is
embedded there. Settings are the constants below; every TrainConfig field can be overridden
by an environment variable CARVANA_<FIELD> (CARVANA_EPOCHS=1, CARVANA_IMAGE_SIZE=32x48, ...),
which is how the tests run this script tiny. CARVANA_EVALUATE=0 skips the evaluation.
"""

from carvana.config import TrainConfig
from carvana.kernel_runtime import train_kernel

# 320x480 is 1/4 of 1280x1918: the JPEGs decode straight at that scale (jpeg_ratio 4).
# Nothing is downloaded, so kernel-metadata.json leaves the kernel's internet off.
CONFIG = TrainConfig(
    model="cnn",
    image_size=(320, 480),
    weights="none",
    epochs=40,
    # Kaggle stops a kernel at 12 h: the schedule is planned to end within 11 h (epochs is
    # the cap when it comes first), leaving the hour for evaluation and the threshold search.
    minutes=11 * 60,
    batch_size=16,
    learning_rate=1e-3,
    patience=8,
    augment=True,
)

train_kernel(CONFIG)
