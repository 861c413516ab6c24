"""The CUDA split of the bar, checked against hand-computed figures."""

from ftwatch.runlog.categories import derive_device_categories, process_total

GiB = 1024**3
MiB = 1024**2
TENSORS = {"weights": 13 * GiB, "lora": 80 * MiB, "grads": 80 * MiB, "optimizer": 160 * MiB, "activations": 3 * GiB}


def test_full_split_adds_up_to_capacity():
    tensor_total = 13 * GiB + 320 * MiB + 3 * GiB
    parts = derive_device_categories(TENSORS, allocated=tensor_total + 700 * MiB, reserved=tensor_total + 2 * GiB,
                                     total=80 * GiB, used=tensor_total + 2 * GiB + 500 * MiB + 4 * GiB,
                                     process_used=tensor_total + 2 * GiB + 500 * MiB)
    assert parts == {"other": 700 * MiB, "cache": 2 * GiB - 700 * MiB, "non_torch": 500 * MiB,
                     "other_processes": 4 * GiB, "free": 80 * GiB - (tensor_total + 2 * GiB + 500 * MiB + 4 * GiB)}
    assert sum(TENSORS.values()) + sum(parts.values()) == 80 * GiB
    assert process_total({**TENSORS, **parts}) == tensor_total + 2 * GiB + 500 * MiB


def test_without_nvml_only_allocator_categories():
    parts = derive_device_categories(TENSORS, allocated=20 * GiB, reserved=21 * GiB)
    assert set(parts) == {"other", "cache"}
    assert parts["cache"] == GiB


def test_parts_never_negative_when_readings_lag():
    # allocator readings taken before the activations were counted: nothing goes negative
    parts = derive_device_categories(TENSORS, allocated=GiB, reserved=GiB, total=80 * GiB, used=2 * GiB,
                                     process_used=GiB)
    assert all(v >= 0 for v in parts.values())
    assert parts["other"] == 0 and parts["cache"] == 0
