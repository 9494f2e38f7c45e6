"""Parameters of every notebook for each run profile: a common part plus per-notebook overrides.

smoke  synthetic data, tiny models, 1-2 epochs: the whole suite runs in a few minutes on 2 CPU cores
       (what CI and tests/test_report.py run). Numbers mean nothing; it checks the plumbing.
cpu    real CIFAR-10 and EuroSAT, scaled down so the whole suite fits in ~30-40 min on 2 CPU cores
       (see SCALING below and the throughput measured to choose it).
gpu    seed-project scale: full data, resnet18_cifar / resnet101 teachers, 30+ epochs, 3 seeds.

`default_profile()` picks gpu when CUDA is available, else cpu.
"""
from __future__ import annotations

import copy

import torch

from .errors import unknown_name

NOTEBOOKS = ("01_baseline", "02_logits", "03_hidden_state", "04_regressor", "05_bonus", "06_efficientvit", "07_eurosat")

# Training throughput on a quiet 2-core CPU (fp32, channels_last, batch 128, images/s): 32 px: tiny_resnet(32) 437,
# student_light 3485; 64 px: tiny_resnet(16) ~190, smallmynet 123, simplenet 273, student_resnet 184,
# student_separable 110, student_depthwise_skip 45, student_light 817. Under load from other jobs these fall 3-10x.
# `threads`: torch CPU threads (None = torch's default). On a CPU shared with other jobs 1 thread was 4x faster than
# 2 (tiny_resnet forward+backward, batch 64: 85 ms vs 348 ms at load 4.5), so smoke uses 1.
SCALING = {
    "smoke": "synthetic gratings (400 train / 100 val / 100 test), tiny models, 1-2 epochs: checks the plumbing only.",
    "cpu": ("scaled to ~35 min on a quiet 2-core CPU: CIFAR-10 8,000 train / 2,000 val / full 10,000 test, "
            "tiny_resnet teacher (width 32) 10 epochs trained once and reused, simplenet students (the homework CNN with BatchNorm) 5 epochs, 2 seeds; "
            "efficientvit b3 -> b1 from scratch at 32 px on 1,500 CIFAR images for 4 epochs; EuroSAT at 32 px (not its "
            "native 64: 4x cheaper, so enough steps fit) with 3,000 train / 1,000 val / full 2,700 test, 4 epochs."),
    "gpu": "seed-project scale: full data, resnet18_cifar teacher 40 epochs, students 30 epochs, 3 seeds.",
}

_COMMON_SMOKE = dict(
    dataset="synthetic", data_root=None, image_size=None, train_limit=None, val_limit=None, test_limit=None,
    synthetic=dict(train_size=400, val_size=100, test_size=100, image_size=32, noise=0.35),
    teacher="tiny_resnet", teacher_kwargs=dict(width=8), teacher_epochs=2, teacher_lr=0.05, teacher_pretrained=False,
    student="student_light", student_kwargs={}, epochs=1, batch_size=64, lr=0.05, seeds=[0, 1], device="auto",
    progress=False, max_steps_per_epoch=None, latency_min_run_time=0.01, n_examples=6, threads=1,
    results_dir="results", checkpoint_dir="checkpoints",
)

_COMMON_CPU = dict(
    dataset="cifar10", data_root="../shared/data", image_size=None, train_limit=8000, val_limit=2000, test_limit=None,
    synthetic=None, teacher="tiny_resnet", teacher_kwargs=dict(width=32), teacher_epochs=10, teacher_lr=0.05,
    teacher_pretrained=False, student="simplenet", student_kwargs={}, epochs=5, batch_size=128, lr=0.05,
    seeds=[0, 1], device="auto", progress=False, max_steps_per_epoch=None, latency_min_run_time=0.2, n_examples=8,
    threads=None,
    results_dir="results", checkpoint_dir="checkpoints",
)

_COMMON_GPU = dict(
    dataset="cifar10", data_root="../shared/data", image_size=None, train_limit=None, val_limit=None, test_limit=None,
    synthetic=None, teacher="resnet18_cifar", teacher_kwargs={}, teacher_epochs=40, teacher_lr=0.1,
    teacher_pretrained=False, student="smallmynet", student_kwargs={}, epochs=30, batch_size=128, lr=0.05,
    seeds=[0, 1, 2], device="auto", progress=False, max_steps_per_epoch=None, latency_min_run_time=0.5,
    n_examples=10, threads=None, results_dir="results", checkpoint_dir="checkpoints",
)

_PER_NOTEBOOK = {
    "01_baseline": {},
    "02_logits": dict(alpha=0.9, temperature=4.0, sweep_alphas=[0.5, 0.9], sweep_temperatures=[2.0, 4.0],
                      sweep_seeds=[0], sweep_epochs=None),
    "03_hidden_state": dict(level_weights=[0.25, 0.5, 1.0], levels=None, hidden_weight=1.0),
    "04_regressor": dict(fitnet_weight=100.0, levels=1),
    "05_bonus": dict(methods=["kd+at", "at", "at:shifted", "dkd", "sp"], alpha=0.9, temperature=4.0),
    "06_efficientvit": dict(teacher="efficientvit_b3", student="efficientvit_b1", teacher_kwargs={}, student_kwargs={},
                            image_size=32, pretrained="auto", drop_rate=0.2, pad=4, alpha=0.7, temperature=4.0,
                            teacher_lr=0.001, lr=0.001, optimizer="adamw"),
    "07_eurosat": dict(dataset="eurosat", image_size=64, student="smallmynet", alpha=0.9, temperature=4.0,
                       students=["simplenet", "student_resnet", "student_separable", "student_depthwise_skip",
                                 "student_light"], students_method="kd", gradcam_images=6),
}

_OVERRIDES = {
    "smoke": {
        "02_logits": dict(sweep_alphas=[0.5], sweep_temperatures=[2.0, 4.0]),
        "05_bonus": dict(methods=["kd+at", "at:shifted", "dkd", "sp"]),
        "06_efficientvit": dict(synthetic=dict(train_size=256, val_size=64, test_size=64, image_size=32),
                                teacher_epochs=1, epochs=1, batch_size=32, max_steps_per_epoch=2, pretrained=False),
        "07_eurosat": dict(dataset="synthetic", image_size=None, student="student_light",
                           synthetic=dict(train_size=400, val_size=100, test_size=100, image_size=64),
                           students=["student_light", "cnn_small"], gradcam_images=4),
    },
    "cpu": {
        "02_logits": dict(sweep_epochs=2),
        "05_bonus": dict(methods=["kd+at", "at:shifted", "dkd", "sp"]),
        "06_efficientvit": dict(train_limit=1500, val_limit=500, test_limit=1000, teacher_epochs=4, epochs=4,
                                batch_size=64, teacher_lr=0.002, lr=0.002, teacher_kwargs={}, seeds=[0, 1]),
        "07_eurosat": dict(data_root="../shared/data", image_size=32, train_limit=3000, val_limit=1000, test_limit=None,
                           teacher="tiny_resnet", teacher_kwargs=dict(width=32), teacher_epochs=8, epochs=4, batch_size=64),
    },
    "gpu": {
        "06_efficientvit": dict(image_size=224, train_limit=20000, teacher_epochs=10, epochs=15, batch_size=128),
        "07_eurosat": dict(teacher="resnet101", teacher_pretrained="auto", teacher_epochs=10, teacher_lr=0.01,
                           epochs=30),
    },
}

PROFILES = {
    name: {"common": common, "notebooks": {nb: {**_PER_NOTEBOOK[nb], **_OVERRIDES[name].get(nb, {})} for nb in NOTEBOOKS},
           "scaling": SCALING[name]}
    for name, common in (("smoke", _COMMON_SMOKE), ("cpu", _COMMON_CPU), ("gpu", _COMMON_GPU))
}


def default_profile(verbose: bool = True) -> str:
    """gpu when CUDA is available, else cpu; says which and why."""
    name = "gpu" if torch.cuda.is_available() else "cpu"
    if verbose:
        why = "CUDA is available" if name == "gpu" else "no CUDA device found"
        print(f"profile: {name} (default, because {why}; pass profile='smoke'|'cpu'|'gpu' to choose)")
    return name


def check_profile(profile: str) -> str:
    if profile not in PROFILES:
        raise unknown_name("profile", profile, PROFILES)
    return profile


def params_for(profile: str, notebook: str) -> dict:
    """The full parameter dict of one notebook under one profile (a deep copy: safe to modify)."""
    check_profile(profile)
    if notebook not in NOTEBOOKS:
        raise unknown_name("notebook", notebook, NOTEBOOKS)
    p = PROFILES[profile]
    return copy.deepcopy({**p["common"], **p["notebooks"][notebook], "profile": profile})
