"""Half precision and int8 against float32 on a saved classifier: top-1 agreement, size on disk, CPU latency.

    python -m lape_hf.tools.precision outputs/demo          # the digits test set, as in the README's figures

bfloat16 and float16 load with `from_pretrained(dir, dtype=...)`; the position-embedding resize runs in float32 in
any dtype (the modeling file), and LayerNorm computes its statistics in float32 for half inputs. int8 is torchao's
dynamic quantization of the Linear layers (`Int8DynamicActivationInt8WeightConfig`), the replacement of the deprecated
`torch.ao.quantization.quantize_dynamic`. Latency is the median of repeated forward passes on one thread: a figure
for this machine, never a test assertion.
"""

from __future__ import annotations

import copy
import os
import statistics
import sys
import tempfile
import time

import torch
from transformers import AutoImageProcessor, AutoModelForImageClassification

import lape_hf  # noqa: F401  (registers LapeViT with the Auto classes)


def top1_agreement(model: torch.nn.Module, reference: torch.Tensor, pixel_values: torch.Tensor) -> torch.Tensor:
    """Indices of the images whose top-1 class differs from `reference` (float32 logits)."""
    parameter = next(model.parameters())
    with torch.no_grad():
        logits = model(pixel_values.to(parameter.dtype)).logits.float()
    return (logits.argmax(-1) != reference.argmax(-1)).nonzero().flatten()


def int8_dynamic(model: torch.nn.Module) -> torch.nn.Module:
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_

    quantized = copy.deepcopy(model)
    quantize_(quantized, Int8DynamicActivationInt8WeightConfig())
    return quantized


def size_on_disk_mb(model: torch.nn.Module) -> float:
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "state.pt")
        torch.save(model.state_dict(), path)
        return os.path.getsize(path) / 1e6


def median_latency_ms(model: torch.nn.Module, pixel_values: torch.Tensor, repeats: int = 100) -> float:
    times = []
    with torch.no_grad():
        for index in range(repeats + 10):
            start = time.perf_counter()
            model(pixel_values)
            if index >= 10:  # warm-up passes are not counted
                times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def digits_test_pixels(model_dir: str) -> tuple[torch.Tensor, torch.Tensor]:
    from lape_hf.images import to_rgb  # the one decode rule (RGB as pipeline() makes it)
    from lape_hf.training.data import load_digits_dataset

    test = load_digits_dataset()["test"]
    processor = AutoImageProcessor.from_pretrained(model_dir)
    images = [to_rgb(image) for image in test["image"]]
    return processor(images, return_tensors="pt").pixel_values, torch.tensor(test["label"])


def main(model_dir: str) -> None:
    torch.set_num_threads(1)
    pixel_values, labels = digits_test_pixels(model_dir)
    float32 = AutoModelForImageClassification.from_pretrained(model_dir).eval()
    with torch.no_grad():
        reference = float32(pixel_values).logits
    accuracy = (reference.argmax(-1) == labels).float().mean().item()
    print(f"float32: accuracy {accuracy:.2%} on {len(labels)} test images")
    for dtype in (torch.bfloat16, torch.float16):
        model = AutoModelForImageClassification.from_pretrained(model_dir, dtype=dtype).eval()
        differ = top1_agreement(model, reference, pixel_values).tolist()
        print(f"{dtype}: top-1 agreement {1 - len(differ) / len(labels):.2%} (images that differ: {differ})")
    quantized = int8_dynamic(float32)
    differ = top1_agreement(quantized, reference, pixel_values).tolist()
    print(f"int8 dynamic (torchao): top-1 agreement {1 - len(differ) / len(labels):.2%} (differ: {differ})")
    print(f"size on disk: float32 {size_on_disk_mb(float32):.2f} MB, int8 {size_on_disk_mb(quantized):.2f} MB")
    for batch_size in (1, 64):
        batch = pixel_values[:batch_size]
        print(
            f"CPU latency, batch {batch_size}, 1 thread (median): float32 {median_latency_ms(float32, batch):.2f} ms, "
            f"int8 {median_latency_ms(quantized, batch):.2f} ms"
        )


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "outputs/demo")
