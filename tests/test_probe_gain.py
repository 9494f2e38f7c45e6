"""probes/probe_gain.py: pairs kdcore train summaries by seed and gives kdcore.stats' paired interval."""
import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "probes"))


def _runs(root: Path, name: str, accs: dict[int, float]) -> list[str]:
    folders = []
    for seed, acc in accs.items():
        folder = root / f"{name}-seed{seed}"
        folder.mkdir()
        (folder / "summary.json").write_text(json.dumps({"seed": seed, "method": name, "test_acc": acc,
                                                         "test_f1": acc - 0.01}))
        folders.append(str(folder))
    return folders


def test_gain_is_the_mean_of_per_seed_differences_with_a_t_interval(tmp_path):
    import probe_gain

    base = _runs(tmp_path, "baseline", {0: 0.80, 1: 0.82, 2: 0.81, 7: 0.5})  # seed 7 has no partner: left out
    kd = _runs(tmp_path, "kd", {0: 0.82, 1: 0.83, 2: 0.84})
    out = tmp_path / "gain.json"
    result = probe_gain.main(["--baseline", *base, "--method", *kd, "--out", str(out)])
    gain = result["test_acc"]["gain"]
    assert result["seeds"] == [0, 1, 2] and gain["n"] == 3
    assert gain["delta"] == pytest.approx(0.02)  # differences 0.02, 0.01, 0.03: mean 0.02, sd 0.01
    half = 4.302652729911275 * 0.01 / 3 ** 0.5  # t(0.975, df=2) · sd / √n
    assert gain["ci_low"] == pytest.approx(0.02 - half) and gain["ci_high"] == pytest.approx(0.02 + half)
    assert gain["significant"] is False  # [−0.0048, +0.0448] holds 0
    assert json.loads(out.read_text())["seeds"] == [0, 1, 2]
    tight = _runs(tmp_path, "kd_tight", {0: 0.82, 1: 0.841, 2: 0.829})  # differences 0.020, 0.021, 0.019
    assert probe_gain.main(["--baseline", *base, "--method", *tight])["test_acc"]["gain"]["significant"] is True


def test_a_folder_without_a_summary_or_seed_is_one_clear_error(tmp_path):
    import probe_gain

    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "summary.json").write_text(json.dumps({"test_acc": 0.8, "test_f1": 0.8}))
    with pytest.raises(SystemExit, match="names no seed"):
        probe_gain.main(["--baseline", str(tmp_path / "old"), "--method", str(tmp_path / "old")])
    with pytest.raises(SystemExit, match="summary.json not found"):
        probe_gain.main(["--baseline", str(tmp_path / "missing"), "--method", str(tmp_path / "old")])


def test_seed_from_name_serves_summaries_older_than_the_seed_field(tmp_path):
    import probe_gain

    base = _runs(tmp_path, "old", {0: 0.80, 1: 0.82, 2: 0.81})
    for folder in base:  # as kdcore train wrote them before it recorded the seed
        summary = Path(folder) / "summary.json"
        summary.write_text(json.dumps({k: v for k, v in json.loads(summary.read_text()).items() if k != "seed"}))
    kd = _runs(tmp_path, "kd", {0: 0.83, 1: 0.82, 2: 0.84})
    with pytest.raises(SystemExit, match="--seed-from-name"):
        probe_gain.main(["--baseline", *base, "--method", *kd])
    result = probe_gain.main(["--baseline", *base, "--method", *kd, "--seed-from-name"])
    assert result["seeds"] == [0, 1, 2] and result["test_acc"]["gain"]["delta"] == pytest.approx(0.02)
    assert [r["seed_from"] for r in result["baseline"]] == ["folder name"] * 3
    assert all("seed_from" not in r for r in result["method"])  # these summaries name their seed
    (tmp_path / "unnamed").mkdir()
    (tmp_path / "unnamed" / "summary.json").write_text(json.dumps({"test_acc": 0.8, "test_f1": 0.8}))
    with pytest.raises(SystemExit, match="names no seed"):
        probe_gain.main(["--baseline", str(tmp_path / "unnamed"), "--method", *kd, "--seed-from-name"])
