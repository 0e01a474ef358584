"""The simulation harness and ``citybrain flywheel simulate``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from cloud.flywheel.mining import (
    BudgetExceedsPool,
    MiningInputError,
    TrainEvalResult,
    curve_summary,
    format_table,
    simulate,
)
from cloud.flywheel.mining._synthetic import make_city_set


@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    return x.astype(np.float32), y


def test_simulate_on_digits_has_the_issue_shape_and_auto_beats_random(digits):
    x, y = digits
    res = simulate(x, y, [10, 20, 40], ["auto", "random"], seeds=2)
    assert set(res) == {"full_supervision", "curves", "std", "seconds"}
    assert set(res["curves"]) == set(res["std"]) == {"auto", "random"}
    for part in ("curves", "std"):
        for curve in res[part].values():
            assert list(curve) == ["10", "20", "40"]
            assert all(0.0 <= v <= 1.0 for v in curve.values())
    assert res["full_supervision"] > 0.9
    assert res["seconds"] > 0
    json.dumps(res)  # plain JSON
    auto = np.mean(list(res["curves"]["auto"].values()))
    rnd = np.mean(list(res["curves"]["random"].values()))
    assert auto >= rnd
    assert all(res["curves"]["random"][b] <= res["full_supervision"] for b in ("10", "20", "40"))


def test_train_eval_is_pluggable_and_sees_only_revealed_labels(digits):
    x, y = digits
    calls = []

    def nearest_centroid(x_lab, y_lab, x_test, y_test, x_pool, n_classes, seed):
        calls.append(len(y_lab))
        cls = np.unique(y_lab)
        cent = np.stack([x_lab[y_lab == c].mean(axis=0) for c in cls])
        pred = cls[((x_test[:, None] - cent[None]) ** 2).sum(-1).argmin(1)]
        return TrainEvalResult(float((pred == y_test).mean()), None)

    res = simulate(x, y, [5, 15], ["kcenter"], seeds=[0, 1], train_eval=nearest_centroid)
    assert calls[0] > 1000  # full supervision first, on the whole pool
    assert calls[1:] == [5, 15, 5, 15]
    assert 0 < res["curves"]["kcenter"]["15"] <= 1


def test_the_train_buttons_head_plugs_in(digits):
    from cloud.flywheel.mining import TRAINERS, flywheel_head_train_eval

    x, y = digits
    assert TRAINERS["flywheel-head"] is flywheel_head_train_eval
    res = simulate(x, y, [10, 30], ["random"], seeds=1, train_eval=flywheel_head_train_eval)
    assert res["full_supervision"] > 0.9
    assert 0.2 < res["curves"]["random"]["10"] <= res["full_supervision"]
    # one class seen: the model can only say that class
    one = flywheel_head_train_eval(x[:3], np.array([4, 4, 4]), x[:50], y[:50], x[:20], 10, 0)
    assert one.accuracy == pytest.approx(float((y[:50] == 4).mean()))
    assert (one.pool_probs[:, 4] == 1).all()


def test_simulate_rejects_bad_input(digits):
    x, y = digits
    with pytest.raises(BudgetExceedsPool, match="larger than the pool"):
        simulate(x, y, [10, 5000], ["random"], seeds=1)
    with pytest.raises(MiningInputError, match="strictly increasing"):
        simulate(x, y, [20, 10], ["random"], seeds=1)
    with pytest.raises(MiningInputError, match="only one class"):
        simulate(x[:50], np.zeros(50), [10], ["random"], seeds=1)
    with pytest.raises(MiningInputError, match="unknown strategy"):
        simulate(x, y, [10], ["magic"], seeds=1)
    with pytest.raises(MiningInputError, match="labels"):
        simulate(x, y[:-1], [10], ["random"], seeds=1)


def test_summary_and_table():
    res = {
        "full_supervision": 1.0,
        "curves": {"a": {"10": 0.5, "20": 0.8, "40": 0.95}, "b": {"10": 0.2, "20": 0.3, "40": 0.4}},
        "std": {"a": {"10": 0.0, "20": 0.1, "40": 0.0}, "b": {"10": 0.0, "20": 0.0, "40": 0.0}},
        "seconds": 1.5,
    }
    s = curve_summary(res)
    assert s["a"]["labels_to_target"] == pytest.approx(20 + 0.1 / 0.15 * 20)
    assert s["b"]["labels_to_target"] is None
    assert s["a"]["aulc"] == pytest.approx((0.65 * 10 + 0.875 * 20) / 30)
    t = format_table(res)
    assert "0.800±0.100" in t and ">40" in t and "full supervision: 1.000" in t


# ---------------------------------------------------------------- CLI


@pytest.fixture(scope="module")
def city(tmp_path_factory):
    root = tmp_path_factory.mktemp("city")
    csv = make_city_set(root, n_per_class=12, n_rare=4, seed=1)
    return root / "images", csv


def _cli(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    from cloud.cli import main

    monkeypatch.setattr(sys, "argv", ["citybrain", "flywheel", "simulate", *args])
    with pytest.raises(SystemExit) as e:
        main()
    out = capsys.readouterr()
    return int(e.value.code or 0), out.out, out.err


def test_cli_simulate_writes_result_plot_and_table(monkeypatch, capsys, city, tmp_path):
    images, csv = city
    out = tmp_path / "result.json"
    code, stdout, err = _cli(
        monkeypatch, capsys,
        "--images", str(images), "--labels", str(csv), "--budgets", "6,12",
        "--strategy", "auto", "--strategy", "random", "--seeds", "2", "--out", str(out),
        "--extractor", "hog-color-pca",
    )  # fmt: skip
    assert code == 0, err
    res = json.loads(out.read_text())
    assert set(res) == {"full_supervision", "curves", "std", "seconds"}
    assert set(res["curves"]) == {"auto", "random"}
    assert list(res["curves"]["auto"]) == ["6", "12"]
    png = out.with_suffix(".png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "strategy" in stdout and "auto" in stdout and "random" in stdout
    assert "full supervision" in stdout
    assert "64 images, 6 classes" in err

    # an existing result is never silently overwritten
    before = out.read_bytes()
    code, _, err = _cli(
        monkeypatch, capsys,
        "--images", str(images), "--labels", str(csv), "--budgets", "6", "--out", str(out),
    )  # fmt: skip
    assert code == 2 and "already exists" in err and "--overwrite" in err
    assert out.read_bytes() == before


def test_cli_simulate_on_the_real_vtest_crop_excerpt(monkeypatch, capsys, tmp_path):
    # real crops of vtest.avi (tests/data/vtest_crops, labels by rule; see its README)
    data = Path(__file__).resolve().parents[1] / "data" / "vtest_crops"
    out = tmp_path / "vtest.json"
    code, stdout, err = _cli(
        monkeypatch, capsys,
        "--images", str(data / "images"), "--labels", str(data / "labels.csv"),
        "--budgets", "8,16,32", "--strategy", "auto", "--strategy", "random",
        "--seeds", "2", "--out", str(out), "--extractor", "hog-color-pca",
    )  # fmt: skip
    assert code == 0, err
    assert "120 images, 4 classes" in err
    res = json.loads(out.read_text())
    assert res["full_supervision"] > 0.8  # the rule's classes are learnable from the crops
    assert list(res["curves"]["auto"]) == ["8", "16", "32"]


@pytest.mark.slow
def test_cli_simulate_with_self_supervised_pretraining_on_the_pool(
    monkeypatch, capsys, city, tmp_path
):
    from cloud.flywheel.mining import _features

    seen: list[int] = []
    real = _features.EXTRACTORS["simclr"]

    def spy(paths, progress=None, **opts):  # the real pretraining, recording its epochs
        seen.append(opts["epochs"])
        return real(paths, progress, **opts)

    monkeypatch.setitem(_features.EXTRACTORS, "simclr", spy)
    images, csv = city
    out = tmp_path / "ssl.json"
    code, stdout, err = _cli(
        monkeypatch, capsys,
        "--images", str(images), "--labels", str(csv), "--budgets", "6,12",
        "--strategy", "auto", "--seeds", "1", "--out", str(out),
        "--pretrain-epochs", "2",
    )  # fmt: skip
    assert code == 0, err
    assert seen == [2]  # SimCLR on the pool is the default, for the epochs asked
    res = json.loads(out.read_text())
    assert list(res["curves"]["auto"]) == ["6", "12"]
    assert out.with_suffix(".png").exists()


def _write_csv(path: Path, rows: list[str], header: str = "path,label") -> Path:
    path.write_text(header + "\n" + "\n".join(rows) + "\n")
    return path


@pytest.mark.parametrize(
    "case, expect",
    [
        ("missing", "2 file(s) listed in"),
        ("single", "needs at least two classes"),
        ("budget", "larger than the pool"),
        ("header", "header must name columns 'path,label'"),
        ("escape", "points outside"),
        ("duplicate", "already listed on line 2"),
        ("empty_label", "empty label"),
        ("strategy", "unknown strategy 'smart'"),
        ("budgets_text", "comma-separated integers"),
        ("no_dir", "does not exist"),
        ("seeds", "--seeds must be at least 1"),
        ("corrupt", "cannot read image"),
        ("one_of_class", "has a single sample"),
        ("trainer", "unknown trainer 'svm'"),
        ("extractor", "unknown extractor 'clip'"),
    ],
)
def test_cli_bad_input_exits_2_with_one_clear_line(
    monkeypatch, capsys, city, tmp_path, case, expect
):
    images, csv = city
    rows = csv.read_text().splitlines()[1:]
    labels, budgets, extra = csv, "6,12", []
    img_dir = images
    if case == "missing":
        labels = _write_csv(tmp_path / "l.csv", rows + ["nope1.png,car", "nope2.png,bus"])
    elif case == "single":
        labels = _write_csv(tmp_path / "l.csv", [r.split(",")[0] + ",car" for r in rows])
    elif case == "budget":
        budgets = "6,60"
    elif case == "header":
        labels = _write_csv(tmp_path / "l.csv", rows, header="file,class")
    elif case == "escape":
        labels = _write_csv(tmp_path / "l.csv", rows + ["../../etc/passwd,car"])
    elif case == "duplicate":
        labels = _write_csv(tmp_path / "l.csv", [rows[0], rows[0], *rows[1:]])
    elif case == "empty_label":
        labels = _write_csv(
            tmp_path / "l.csv", rows + [rows[0].split(",")[0].replace("0", "9") + ","]
        )
    elif case == "strategy":
        extra = ["--strategy", "smart"]
    elif case == "budgets_text":
        budgets = "6,ten"
    elif case == "no_dir":
        img_dir = tmp_path / "absent"
    elif case == "seeds":
        extra = ["--seeds", "0"]
    elif case == "corrupt":
        img_dir = tmp_path / "imgs"
        img_dir.mkdir()
        for r in rows:
            name = r.split(",")[0]
            (img_dir / name).write_bytes((images / name).read_bytes())
        (img_dir / rows[0].split(",")[0]).write_bytes(b"not a png")
    elif case == "trainer":
        extra = ["--trainer", "svm"]
    elif case == "extractor":
        extra = ["--extractor", "clip"]
    elif case == "one_of_class":
        labels = _write_csv(tmp_path / "l.csv", rows[:-1] + [rows[-1].split(",")[0] + ",tram"])
    out = tmp_path / "r.json"
    code, stdout, err = _cli(
        monkeypatch, capsys,
        "--images", str(img_dir), "--labels", str(labels), "--budgets", budgets, "--seeds", "1",
        "--out", str(out), *extra,
    )  # fmt: skip
    assert code == 2
    assert expect in err, err
    lines = err.strip().splitlines()
    assert lines[-1].startswith("error:") and expect in lines[-1]
    assert sum(ln.startswith("error:") for ln in lines) == 1
    assert not out.exists() and not out.with_suffix(".png").exists()
