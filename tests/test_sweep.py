"""`kdsr sweep` end to end on Ray Tune: a tiny sweep of three arms on the synthetic walk data runs every trial,
selects each arm's configuration on validation, reads test once for the winners only, skips finished trials on a
re-run, and refuses an unknown key before anything runs."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
import yaml

from jobs import sweep as sweep_job
from toydata import synthetic, toy_features
from trainer.significance import paired_lift
from trainer.sweep import INTERRUPTED, ArmConfig, Trial, error_line, trial_record

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def sweep_setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    data = synthetic(root / "data", n_users=60, n_items=40)
    feats = toy_features(data, root / "feat", mask_every=9)
    base = {
        "dataset": str(data),
        "out_dir": str(root / "unused"),
        "epochs": 3,
        "patience": 2,
        "num_workers": 0,
        "model": {"hidden": 16, "n_layers": 1, "n_heads": 1, "max_len": 8},
        "optim": {"batch_size": 8, "lr": 0.01},
        "eval": {"ks": [5, 10]},
    }
    (root / "base.yaml").write_text(yaml.safe_dump(base))
    text = [{"name": "text", "features": str(feats)}]
    sweep = {
        "base": str(root / "base.yaml"),
        "out_dir": str(root / "out"),
        "seeds": [0, 1],
        "arms": {
            "id": {},
            "fused": {"set": {"modalities": text, "distill.enabled": False}, "grid": {"model.fusion": ["sum", "gate"]}},
            "distilled": {"set": {"modalities": text}, "grid": {"model.feature_scaling": ["none", "l2"]}},
        },
        "trial_cpus": 1,
        "ray": {"num_cpus": 2},
        "bootstrap": 200,
    }
    (root / "sweep.yaml").write_text(yaml.safe_dump(sweep, sort_keys=False))  # arms in order: id first
    return root


def test_sweep_runs_selects_on_validation_tests_winners_once(sweep_setup, capsys):
    root = sweep_setup
    assert sweep_job.main([str(root / "sweep.yaml")]) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out)  # stdout: the summary line only
    assert summary["trials"] == 10 and summary["ran"] == 10
    # progress without Tune's noise: no tensorboardX renaming note per epoch, no closed-stream warnings
    assert "sweep: id/" in captured.err and "is illegal" not in captured.err and "calling 'flush'" not in captured.err
    out = root / "out"
    result = json.loads((out / "results.json").read_text())
    trials = result["trials"]
    assert len(trials) == 10 and {t["status"] for t in trials} == {"finished"}
    # no trial read test: eval.test is off in every trial
    for t in trials:
        metrics = json.loads((out / "trials" / f"{t['name']}" / "metrics.json").read_text())
        assert metrics["test"] is None
        assert metrics["valid_history"][t["selected_epoch"]]["ndcg@10"] == pytest.approx(t["valid"]["ndcg@10"])
    # each arm's winner is its configuration with the best mean validation NDCG@10 over the two seeds
    for arm, a in result["arms"].items():
        means = {}
        for t in trials:
            if t["arm"] == arm:
                label = ", ".join(f"{k}={v}" for k, v in t["params"].items()) or "-"
                means.setdefault(label, []).append(t["valid"]["ndcg@10"])
        assert all(len(v) == 2 for v in means.values())
        best = max(means, key=lambda k: np.mean(means[k]))
        assert a["winner"] == best, arm
        assert sorted(a["test"]) == ["0", "1"]  # test of the winner's two seeds only
    tested = sorted(p.name for p in (out / "test").iterdir())
    assert len(tested) == 6  # 3 winners x 2 seeds, nothing else
    # the lifts are paired over the same users
    for arm in ("fused", "distilled"):
        lift = result["lifts"][arm]["ndcg@10"]
        assert lift["seeds"] == 2 and 0 <= lift["t_p_value"] <= 1 and lift["ci_low"] <= lift["ci_high"]
    # what the winners' V^m kept of the stored features: arms with features only, cosines and r in [-1, 1]
    assert sorted(result["retention"]) == ["distilled", "fused"]
    assert all(-1 <= v <= 1 for a in result["retention"].values() for v in a["text"])
    # and the next-item kNN NDCG@10 of the stored and the trained table: the same stored figure in both arms
    knn = {arm: a["text"][2:] for arm, a in result["retention"].items()}
    assert all(len(v) == 2 and 0 <= min(v) and max(v) <= 1 for v in knn.values())
    assert knn["fused"][0] == knn["distilled"][0] > 0
    # every pair of winners, in arm order: the same numbers as the lifts where the pair is against the baseline
    pairs = {(p["arm"], p["vs"]): p for p in result["pairwise"]}
    assert sorted(pairs) == [("distilled", "fused"), ("distilled", "id"), ("fused", "id")]
    assert pairs[("fused", "id")]["ndcg@10"] == result["lifts"]["fused"]["ndcg@10"]
    md = (out / "results.md").read_text()
    assert "## Winners on validation, and their test" in md and "distilled" in md and "p (paired t)" in md
    assert "Every pair of winners on test" in md and "| distilled | fused |" in md

    assert result["trials_done"] == "10 of 10" and "IN PROGRESS" not in md

    # a re-run trains nothing and reads no test again
    stamps = {p.name: p.stat().st_mtime_ns for p in (out / "test").iterdir()}
    assert sweep_job.main([str(root / "sweep.yaml")]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["ran"] == 0 and again["winners"] == summary["winners"]
    assert {p.name: p.stat().st_mtime_ns for p in (out / "test").iterdir()} == stamps

    # a winner trained again under the same name (its trial.json newer than its kept test) is tested again
    name = sorted(stamps)[0]  # <arm>-<key>-seed<n>.npz
    trial = out / "trials" / name.removesuffix(".npz").replace("-", "/", 1) / "trial.json"
    earlier = trial.stat().st_mtime - 10
    os.utime(out / "test" / name, (earlier, earlier))
    assert sweep_job.main([str(root / "sweep.yaml"), "train=false"]) == 0
    capsys.readouterr()
    now = {p.name: p.stat().st_mtime_ns for p in (out / "test").iterdir()}
    assert [k for k in stamps if now[k] != stamps[k]] == [name] and now[name] > trial.stat().st_mtime_ns
    assert json.loads((out / "results.json").read_text())["arms"] == result["arms"]  # the same checkpoint, same test

    # a finished trial of an older trainer version (another config hash, the same config read today) still counts
    record = next((out / "trials").glob("fused/*-seed0/trial.json"))
    record.write_text(json.dumps(json.loads(record.read_text()) | {"config_sha": "older"}))
    assert sweep_job.main([str(root / "sweep.yaml")]) == 0
    assert json.loads(capsys.readouterr().out)["ran"] == 0

    # a changed base under the same out_dir is refused, naming the trial folder
    assert sweep_job.main([str(root / "sweep.yaml"), "set={optim.lr: 0.02}"]) == 2
    err = capsys.readouterr().err
    assert "trained with another config" in err and "Traceback" not in err


def test_search_seeds_search_the_grid_on_the_first_seed_then_train_the_winner_on_the_rest(sweep_setup, capsys):
    root = sweep_setup
    spec = yaml.safe_load((root / "sweep.yaml").read_text())
    del spec["arms"]["distilled"]
    spec |= {"out_dir": str(root / "search"), "search_seeds": 1}
    (root / "search.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    # train=false before anything ran: nothing trained, nothing tested, the state reported as in progress
    assert sweep_job.main([str(root / "search.yaml"), "train=false"]) == 0
    assert json.loads(capsys.readouterr().out)["ran"] == 0
    early = json.loads((root / "search" / "results.json").read_text())
    assert early["trials_done"] == "0 of 5" and not (root / "search" / "test").exists()
    assert "IN PROGRESS" in (root / "search" / "results.md").read_text()
    assert sweep_job.main([str(root / "search.yaml")]) == 0
    summary = json.loads(capsys.readouterr().out)
    # id: 2 seeds; fused: 2 configurations on seed 0, then the winner on seed 1
    assert summary["trials"] == 5 and summary["ran"] == 5
    result = json.loads((root / "search" / "results.json").read_text())
    fused = [t for t in result["trials"] if t["arm"] == "fused"]
    on_seed0 = {t["params"]["model.fusion"]: t["valid"]["ndcg@10"] for t in fused if t["seed"] == 0}
    best = max(on_seed0, key=on_seed0.get)
    assert result["arms"]["fused"]["winner"] == f"model.fusion={best}"
    assert [t["params"]["model.fusion"] for t in fused if t["seed"] == 1] == [best]
    n = {c["label"]: c["n"] for c in result["arms"]["fused"]["configurations"]}
    assert n[f"model.fusion={best}"] == 2 and sorted(n.values()) == [1, 2]
    assert sorted(result["arms"]["fused"]["test"]) == ["0", "1"]
    assert "first 1 seed(s) wins" in (root / "search" / "results.md").read_text()

    # a configuration added to a finished search (`points`) trains alone: the finished trials are kept
    stamps = {p.parent.name: p.stat().st_mtime_ns for p in (root / "search" / "trials").glob("*/*/trial.json")}
    spec["arms"]["fused"]["points"] = [{"model.fusion": "concat", "model.feature_scaling": "l2"}]
    (root / "search.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    assert sweep_job.main([str(root / "search.yaml")]) == 0
    more = json.loads(capsys.readouterr().out)
    result = json.loads((root / "search" / "results.json").read_text())
    added = "model.fusion=concat, model.feature_scaling=l2"
    wins = result["arms"]["fused"]["winner"] == added
    assert more["ran"] == 1 + wins  # the point on seed 0, and on seed 1 only if it won
    kept = {p.parent.name: p.stat().st_mtime_ns for p in (root / "search" / "trials").glob("*/*/trial.json")}
    assert {k: kept[k] for k in stamps} == stamps and len(kept) == len(stamps) + 1 + wins
    assert added in {c["label"] for c in result["arms"]["fused"]["configurations"]}


def test_arm_points_are_configurations_beside_the_grid():
    arm = ArmConfig(
        set={"distill.enabled": False},
        grid={"model.fusion": ["sum", "gate"]},
        points=[{"model.fusion": "gate", "modalities.0.features": "other.zarr"}],
    )
    assert arm.configurations() == [
        {"model.fusion": "sum"},
        {"model.fusion": "gate"},
        {"model.fusion": "gate", "modalities.0.features": "other.zarr"},
    ]
    # an arm without a grid keeps its one configuration (its `set` alone) beside the points
    assert ArmConfig(points=[{"model.fusion": "sum"}]).configurations() == [{}, {"model.fusion": "sum"}]
    assert ArmConfig().configurations() == [{}]
    with pytest.raises(ValueError, match="both fixed and searched: distill.enabled"):
        ArmConfig(set={"distill.enabled": False}, points=[{"distill.enabled": True}])
    with pytest.raises(ValueError, match="listed twice"):
        ArmConfig(grid={"model.fusion": ["sum", "gate"]}, points=[{"model.fusion": "sum"}])


def test_sweep_refuses_an_unknown_key_before_running(sweep_setup, capsys):
    root = sweep_setup
    bad = yaml.safe_load((root / "sweep.yaml").read_text())
    bad["arms"]["fused"]["grid"]["model.fusoin"] = ["sum"]
    bad["out_dir"] = str(root / "bad")
    (root / "bad.yaml").write_text(yaml.safe_dump(bad, sort_keys=False))
    assert sweep_job.main([str(root / "bad.yaml")]) == 2
    err = capsys.readouterr().err
    assert "arm 'fused'" in err and "unknown key 'model.fusoin'" in err and "Traceback" not in err
    assert not (root / "bad").exists()
    # and an unknown sweep key
    assert sweep_job.main([str(root / "sweep.yaml"), "trial_cpu=2"]) == 2
    assert "trial_cpu" in capsys.readouterr().err


def test_paired_lift_finds_a_real_difference_and_not_a_null_one():
    rng = np.random.default_rng(0)
    base = [rng.random(2000) for _ in range(3)]
    better = [b + 0.05 + rng.normal(0, 0.1, b.size) for b in base]
    same = [b + rng.normal(0, 0.1, b.size) for b in base]
    up = paired_lift(better, base, n_boot=500)
    assert up.t_p_value < 1e-6 and up.ci_low > 0.04 and up.mean_diff == pytest.approx(0.05, abs=0.01)
    null = paired_lift(same, base, n_boot=500)
    assert null.t_p_value > 0.01 and null.ci_low < 0 < null.ci_high
    with pytest.raises(ValueError, match="not evaluated on the same users"):
        paired_lift([base[0][:10]], [base[0]])


def test_an_interrupted_sweep_records_no_unfinished_trial_as_done(sweep_setup):
    """Ctrl-C during a sweep: Tune stops its trials and returns; a trial cut short is not a result (it is
    reported as interrupted and resumes on a re-run), so it never enters selection."""
    import os
    import signal
    import subprocess
    import sys
    import time

    root = sweep_setup
    spec = yaml.safe_load((root / "sweep.yaml").read_text())
    # one trial at a time: a quick arm (1 epoch) completes its search, the id arm trains until interrupted and
    # the last arm's trial is still pending then (Tune has no result for it, not even its config)
    arms = {"quick": {"set": {"epochs": 1}}, "id": {}, "pending": {"set": {"model.dropout": 0.1}}}
    spec |= {"out_dir": str(root / "interrupted"), "arms": arms, "seeds": [0], "set": {"epochs": 400}}
    spec["max_concurrent"] = 1
    spec["set"]["patience"] = 400  # trains until interrupted
    (root / "interrupted.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    repo = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": str(repo)}
    log = root / "interrupted.log"
    with open(log, "w") as err_file:  # a file, not a pipe: a chatty run never blocks on a full pipe
        proc = subprocess.Popen(
            [sys.executable, "-m", "jobs.sweep", str(root / "interrupted.yaml")],
            cwd=repo,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=err_file,
            text=True,
        )
        metrics = root / "interrupted" / "trials" / "id"
        deadline = time.time() + 300
        quick = root / "interrupted" / "trials" / "quick"

        def started() -> bool:
            return bool(list(metrics.glob("*/metrics.json")) and list(quick.glob("*/trial.json")))

        while not started() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.5)
        assert list(metrics.glob("*/metrics.json")), "the trial never finished an epoch"
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=300)
    assert proc.returncode == 1
    last = log.read_text().strip().splitlines()[-1]  # the stage's one-line error
    assert last.startswith("kdsr sweep: error:") and "Traceback" not in log.read_text()
    assert "2 trials failed" in last and "id/" in last and "pending/" in last
    assert last.count("interrupted before it finished") == 2
    assert not list(metrics.glob("*/trial.json"))  # not done: a re-run resumes it
    result = json.loads((root / "interrupted" / "results.json").read_text())
    assert result["trials_done"] == "1 of 3" and result["arms"]["quick"]["winner"] == "-"
    # the state is reported, but no test is read for the complete arm: that waits for a run not interrupted
    assert result["arms"]["quick"]["test"] == {} and not (root / "interrupted" / "test").exists()


def test_a_failing_trial_is_named_with_its_error_and_the_others_still_report(sweep_setup, capsys):
    """A trial that raises (its features store is missing) fails alone: the sweep names it with the error's
    own message and where its log is, exits 1, and still selects and reports the arm that trained."""
    root = sweep_setup
    spec = yaml.safe_load((root / "sweep.yaml").read_text())
    missing = root / "no-such-store.zarr"
    spec |= {
        "out_dir": str(root / "failing"),
        "arms": {"id": {}, "broken": {"set": {"modalities": [{"name": "text", "features": str(missing)}]}}},
        "seeds": [0],
        "set": {"epochs": 1},
    }
    (root / "failing.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    assert sweep_job.main([str(root / "failing.yaml")]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("kdsr sweep: error: 1 trials failed") and "broken/" in err
    assert str(missing) in err and INTERRUPTED not in err
    trial_log = Path(err.rsplit("(its log: ", 1)[1].rstrip(")"))  # the trial's own log, beside its outputs
    assert trial_log.parent.parent == root / "failing" / "trials" / "broken"
    assert "Traceback" in trial_log.read_text() and str(missing) in trial_log.read_text()
    result = json.loads((root / "failing" / "results.json").read_text())
    assert result["trials_done"] == "1 of 2" and len(result["failed"]) == 1
    assert result["arms"]["id"]["winner"] == "-" and sorted(result["arms"]["id"]["test"]) == ["0"]


def test_error_line_is_the_raised_exception_not_the_advice_after_it(tmp_path):
    """Tune's error file ends with the exception for a Python error, but with advice for a worker killed for
    memory: the message is the last `Type: message` line either way."""
    raised = 'Failure # 1\nray::run_trial()\n  File "x.py", line 3, in f\nkdsr.config.ConfigError: bad key\n'
    killed = (
        "ray.exceptions.OutOfMemoryError: Task was killed due to low memory.\nTo adjust the kill threshold, set X.\n"
    )
    for text, expected in ((raised, "kdsr.config.ConfigError: bad key"), (killed, killed.splitlines()[0])):
        (tmp_path / "error.txt").write_text(text)
        assert error_line(str(tmp_path / "error.txt")) == expected
    assert error_line(None) == "failed"


def test_a_trial_record_counts_the_time_of_every_run_of_the_trial(tmp_path):
    """A trial paused and resumed trains in several runs: its record sums its epochs' training and validation
    time from its history, not the time of the run that finished it."""
    history = [
        {"epoch": 0, "seconds": 10.0, "eval_seconds": 2.0, "ndcg@10": 0.1},
        {"epoch": 1, "seconds": 12.0, "eval_seconds": 3.0, "ndcg@10": 0.2},  # trained after a resume
        {"epoch": 2, "seconds": 11.0, "ndcg@10": 0.15},  # a history from before eval_seconds was recorded
    ]
    (tmp_path / "metrics.json").write_text(json.dumps({"valid_history": history, "selected_epoch": 1}))
    cfg = {"dataset": str(tmp_path), "out_dir": str(tmp_path), "epochs": 3, "patience": 1}
    record = trial_record(Trial("id", {}, 0, cfg, key="id/x"))
    assert record["seconds"] == 38.0 and record["epoch_seconds"] == 11.0
    assert (record["stop"], record["selected_epoch"], record["valid"]) == ("patience", 1, {"ndcg@10": 0.2})


def test_asha_stops_a_trailing_trial_which_then_counts_with_the_score_it_reached(sweep_setup, capsys):
    """ASHA on: one trial at a time, the learning one first, so the one that cannot learn (lr 1e-7: it stays at
    its initial weights) trails at the first rung, is stopped there and recorded as stopped by ASHA."""
    root = sweep_setup
    spec = yaml.safe_load((root / "sweep.yaml").read_text())
    spec |= {
        "out_dir": str(root / "asha"),
        "arms": {"id": {"grid": {"optim.lr": [0.01, 1e-7]}}},
        "seeds": [0],
        "set": {"epochs": 4, "patience": 4},
        "max_concurrent": 1,
        "asha": {"enabled": True, "grace_period": 1, "reduction_factor": 2},
    }
    (root / "asha.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    assert sweep_job.main([str(root / "asha.yaml")]) == 0
    capsys.readouterr()
    result = json.loads((root / "asha" / "results.json").read_text())
    by_lr = {t["params"]["optim.lr"]: t for t in result["trials"]}
    good, stuck = by_lr[0.01], by_lr[1e-7]
    assert (good["status"], good["stop"], good["epochs"]) == ("finished", "cap", 4)
    assert (stuck["status"], stuck["stop"]) == ("stopped", "asha") and stuck["epochs"] < 4
    # its time is its epochs' from its history (the trial did not write its record); a fast machine runs these
    # tiny epochs in hundredths of a second, so compare with the history rather than with zero
    (stuck_metrics,) = [
        json.loads((d / "metrics.json").read_text())
        for d in (root / "asha" / "trials" / "id").iterdir()
        if yaml.safe_load((d / "config.yaml").read_text())["optim"]["lr"] == 1e-7
    ]
    history = stuck_metrics["valid_history"]
    assert len(history) == stuck["epochs"]
    assert stuck["seconds"] == round(sum(h["seconds"] + h["eval_seconds"] for h in history), 2)
    assert stuck["valid"]["ndcg@10"] < good["valid"]["ndcg@10"]
    assert result["arms"]["id"]["winner"] == "optim.lr=0.01" and result["trials_done"] == "2 of 2"
    assert "| asha |" in (root / "asha" / "results.md").read_text()


def test_every_shipped_sweep_config_plans_its_trials(monkeypatch):
    """Each configs/sweep/*.yaml loads and every trial's train config validates (plan_trials raises on a key
    that is not a train key); studies that share an out_dir name the same configuration the same way."""

    from kdsr.config import load_config
    from trainer.sweep import SweepConfig, plan_trials

    repo = Path(__file__).resolve().parent.parent
    monkeypatch.chdir(repo)
    names: dict[tuple[str, str], dict] = {}  # (out_dir, trial name) -> its config, across studies
    paths = sorted((repo / "configs" / "sweep").glob("*.yaml"))
    assert len(paths) >= 6
    for p in paths:
        cfg = load_config(SweepConfig, p)
        trials = plan_trials(cfg, str(p))
        assert {t.arm for t in trials} == set(cfg.arms) and p.read_text().startswith(
            f"# kdsr sweep configs/sweep/{p.name}"
        )
        for t in trials:
            assert names.setdefault((cfg.out_dir, t.name), t.config) == t.config, f"{p.name}: {t.name}"
    # the encoder study reuses the larger Beauty search's ID and MiniLM trials
    shared = {name for out, name in names if out == "runs/sweep/beauty-arms"}
    assert "fused/a065780e0c-seed2" in shared and "mpnet-fused/44136fa355-seed0" in shared
