"""Where and how precisely training runs: the tf.distribute strategy, the dtype policy, XLA."""

from __future__ import annotations

import contextlib
import ctypes
import os
import platform
from collections.abc import Iterator
from pathlib import Path

import keras
import tensorflow as tf

PRECISIONS = ("auto", "float32", "mixed_float16", "mixed_bfloat16")
# cpuinfo flags of CPUs with bfloat16 arithmetic; elsewhere oneDNN emulates it, slower than float32.
BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})
# mallopt's parameter numbers in glibc's malloc.h.
M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
KEEP_FREED_ENV = "CARVANA_KEEP_FREED"  # "0": CPU training leaves glibc's malloc as it is


def pick_strategy() -> tf.distribute.Strategy:
    """TPUStrategy when a TPU is attached, MirroredStrategy for several GPUs, else default."""
    # Only look for a TPU when one is announced: the resolver otherwise probes the network.
    tpu = os.environ.get("TPU_NAME") or (
        "local" if tf.config.list_physical_devices("TPU") else None
    )
    if tpu:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu)
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    if len(tf.config.list_logical_devices("GPU")) > 1:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def has_gpu() -> bool:
    """Whether TensorFlow sees a GPU."""
    return bool(tf.config.list_logical_devices("GPU"))


def cpu_has_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether the CPU computes in bfloat16 natively (AVX512-BF16 or AMX), per cpuinfo's flags."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:  # not Linux: no way to tell, so no bfloat16
        return False
    flags = {f for line in text.splitlines() if line.startswith("flags") for f in line.split()}
    return bool(flags & BF16_FLAGS)


def keep_freed_memory() -> bool:
    """Have glibc's malloc keep freed memory for reuse instead of giving it back to the system;
    False where the C library is not glibc."""
    # A CPU training step allocates and frees activations of tens of MB. glibc serves blocks
    # over 32 MB with mmap and unmaps them when freed, so every step faults them in again, and
    # each munmap holds the address-space lock that the other threads' page faults wait for.
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(None)
    return bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1))


def keep_freed_memory_on_cpu() -> bool:
    """keep_freed_memory() when TensorFlow sees no GPU, unless CARVANA_KEEP_FREED is "0";
    whether it did."""
    # 2-core AVX2 host, MobileNetV2 at 128x192 (benchmarks/cpu_malloc.py): steady epochs of
    # 66 s instead of 127 s, which spent 40% of their CPU time in the kernel.
    if has_gpu() or os.environ.get(KEEP_FREED_ENV, "1") == "0":
        return False
    return keep_freed_memory()


def resolve_precision(precision: str) -> str:
    """The dtype policy to train with: "auto" is mixed_float16 on a GPU, mixed_bfloat16 on a
    CPU with bfloat16 arithmetic, float32 elsewhere."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if precision != "auto":
        return precision
    if has_gpu():
        return "mixed_float16"
    # MobileNetV2 U-Net, 2 AVX512-BF16 cores, 4-minute budget: 1.3x the epochs and held-out
    # Dice 0.952 instead of 0.944 (benchmarks/quality.py --precision); weights stay float32.
    return "mixed_bfloat16" if cpu_has_bf16() else "float32"


def resolve_jit(jit_compile: bool | str, replicas: int = 1) -> bool | str:
    """Keras's jit_compile: "auto" lets Keras use XLA on accelerators only; never with
    several replicas."""
    # Keras's fit compiles strategy.run itself, replicas included, as one XLA cluster, which
    # XLA cannot place on several devices ("Trying to access resource ... located in device
    # CPU:1 from device CPU:0"); Keras's own "auto" turns XLA off under tf.distribute too.
    if replicas > 1:
        return False
    # XLA on CPU compiles for a minute and then trains slower; keep it for accelerators.
    if jit_compile == "auto":
        return "auto" if has_gpu() else False
    return bool(jit_compile)


def global_batch(batch_size: int, replicas: int) -> int:
    """The batch size rounded up to a multiple of the replica count."""
    # Keras's fit averages the first batch's per-replica shares to build the model, which
    # fails when they differ in size (AddN: [4,...] != [3,...]).
    return -(-batch_size // replicas) * replicas


def whole_for_replicas(dataset, images: int, batch_size: int, replicas: int):
    """The batched dataset without a last batch too small to give every replica an image."""
    # An empty share fails on CPU ("input depth must be evenly divisible by filter depth").
    last = images % batch_size
    if replicas == 1 or last == 0 or last >= replicas:
        return dataset
    dataset = dataset.filter(lambda x, y: tf.shape(x)[0] >= replicas)
    return dataset.apply(tf.data.experimental.assert_cardinality(images // batch_size))


@contextlib.contextmanager
def dtype_policy(name: str) -> Iterator[None]:
    """Set Keras's global dtype policy for the block, restoring the previous one afterwards."""
    saved = keras.mixed_precision.dtype_policy().name
    keras.mixed_precision.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.mixed_precision.set_dtype_policy(saved)
