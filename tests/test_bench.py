"""benchmarks/bench.py end to end on small synthetic data: it writes its result file, and its warm-cache run
(the same KD run again at the same seed) serves every teacher logit from the cache and trains the same student."""
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))


def test_bench_warm_cache_run_hits_everything_and_trains_the_same_student(tmp_path, monkeypatch):
    import bench

    monkeypatch.setenv("KDCORE_DATA", str(tmp_path / "no-data"))  # CIFAR-10 absent: synthetic gratings
    result = bench.main(["--teacher", "tiny_resnet", "--teacher-epochs", "1", "--train-limit", "600",
                         "--test-limit", "200", "--epochs", "2", "--steps", "2", "--out", str(tmp_path)])
    written = json.loads((tmp_path / "cpu.json").read_text())
    assert written["data_source"].startswith("synthetic") and written["workload"]["train"] == 600
    cold, warm = written["kdcore"], written["kdcore"]["warm"]
    assert cold["cache_hit_rate"] < 0.05 and warm["cache_hit_rate"] == 1.0
    assert warm["kd_loss"] == cold["kd_loss"]  # exact logits, same seed and views: the same training, epoch by epoch
    assert warm["test_acc"] == cold["test_acc"]
    assert len(warm["epoch_s"]) == 2 and written["ratios"]["best_epoch_warm_cache"] > 0
    assert result["target_4x_met_warm_cache"] == written["target_4x_met_warm_cache"]
