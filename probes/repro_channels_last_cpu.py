"""Try to reproduce the oneDNN heap corruption seen once with channels_last on CPU.

Seen: "free(): invalid next size" during fit() of tiny_resnet(width=8) at 64 px with NHWC weights and
inputs on a 2-core CPU (torch 2.14.1). Each case below runs in its own subprocess (a crash must not take
this script down) with glibc's heap checks on (MALLOC_CHECK_=3, MALLOC_PERTURB_), so corruption aborts at
the faulty free instead of later. A case trains a few SGD steps on random data (full batches, then an odd
last batch), then evaluates a larger batch under no_grad, as fit() does.

    .venv/bin/python probes/repro_channels_last_cpu.py [--steps 6] [--timeout 90]
"""
from __future__ import annotations

import argparse
import itertools
import os
import subprocess
import sys

CASES = [  # (width, image size, batch, precision, memory format); the NCHW rows are the controls
    (8, 64, 128, "fp32", "nhwc"), (8, 64, 128, "fp32", "nchw"), (8, 32, 128, "fp32", "nhwc"),
    (8, 32, 128, "fp32", "nchw"), (8, 64, 128, "bf16", "nhwc"), (16, 64, 128, "fp32", "nhwc"),
    (32, 64, 128, "fp32", "nhwc"),
]


def child(width: int, size: int, batch: int, precision: str, fmt: str, steps: int) -> None:
    import torch

    from kdcore.models import create_model

    torch.manual_seed(0)
    cl = torch.channels_last if fmt == "nhwc" else torch.contiguous_format
    model = create_model("tiny_resnet", num_classes=10, width=width).to(memory_format=cl)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)
    bf16 = precision == "bf16"
    for b in itertools.chain([batch] * steps, [batch // 2 + 1]):  # odd last batch, like drop_last=False
        x = torch.randn(b, 3, size, size).contiguous(memory_format=cl)
        y = torch.randint(10, (b,))
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = torch.nn.functional.cross_entropy(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        model(torch.randn(max(batch, 256), 3, size, size).contiguous(memory_format=cl))
    print(f"ok loss={loss.item():.4f}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--timeout", type=float, default=90)
    p.add_argument("--case", nargs=5, default=None, help=argparse.SUPPRESS)  # internal: run one case here
    p.add_argument("--no-malloc-check", dest="malloc_check", action="store_false",
                   help="plain glibc (the crash then shows later, or not at all)")
    a = p.parse_args()
    if a.case:
        w, s, b, prec, fmt = a.case
        child(int(w), int(s), int(b), prec, fmt, a.steps)
        return 0
    import torch
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {torch.backends.cpu.get_cpu_capability()}")
    env = dict(os.environ, **({"MALLOC_CHECK_": "3", "MALLOC_PERTURB_": "165"} if a.malloc_check else {}))
    crashed = 0
    for case in CASES:
        cmd = [sys.executable, __file__, "--steps", str(a.steps), "--case", *map(str, case)]
        try:
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=a.timeout)
            status = "ok" if proc.returncode == 0 else f"CRASH rc={proc.returncode}: {proc.stderr.strip()[-300:]}"
        except subprocess.TimeoutExpired:
            status = "timeout (not a crash)"
        crashed += status.startswith("CRASH")
        print(f"width={case[0]:>2} {case[1]}px batch={case[2]} {case[3]} {case[4]}: {status}", flush=True)
    print(f"{crashed} of {len(CASES)} cases crashed")
    return 1 if crashed else 0


if __name__ == "__main__":
    sys.exit(main())
