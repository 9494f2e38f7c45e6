"""CPU latency as a measurement: models timed interleaved, thread count stated, no import noise."""
import subprocess
import sys

import torch
import torch.nn as nn

from kdcore.evaluate import latency_ms


class Recorder(nn.Module):
    """Appends its name to a shared log on every forward (class attribute: deep copies share it)."""

    log: list = []

    def __init__(self, name):
        super().__init__()
        self.name = name
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        Recorder.log.append(self.name)
        return self.conv(x)


def test_latency_is_measured_interleaved_with_warmup_and_thread_count():
    Recorder.log = []
    models = {name: Recorder(name) for name in ("a", "b", "c")}
    out = latency_ms(models, (3, 16, 16), repeats=6, min_run_time=0.0, warmup=2)
    assert set(out) == {"a", "b", "c"}
    assert all(v["latency_ms"] > 0 and v["threads"] == torch.get_num_threads() for v in out.values())
    log = Recorder.log
    assert log[:6] == ["a", "a", "b", "b", "c", "c"]  # warm-up, untimed
    timed = log[6:]
    assert len(timed) == 18 and all(timed.count(n) == 6 for n in "abc")
    rounds = [timed[i:i + 3] for i in range(0, 18, 3)]
    assert all(sorted(r) == ["a", "b", "c"] for r in rounds)  # every round times each model once
    assert len({r[0] for r in rounds}) == 3  # and the order rotates, so none is always first
    assert latency_ms({}, (3, 16, 16)) == {}
    assert latency_ms({"a": Recorder("a")}, (3, 16, 16), repeats=2, min_run_time=0.0, threads=1)["a"]["threads"] == 1


def test_latency_does_not_import_torch_cpp_extension():
    # torch.utils.benchmark imports torch.utils.cpp_extension, which logs "No CUDA runtime is found" on machines
    # with a CUDA_HOME but no GPU: a red stderr box on every report page.
    code = ("import sys, torch; from kdcore.evaluate import latency_ms; "
            "m = torch.nn.Conv2d(3, 4, 3); latency_ms({'m': m}, (3, 8, 8), repeats=2, min_run_time=0); "
            "print('torch.utils.cpp_extension' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", out.stderr
