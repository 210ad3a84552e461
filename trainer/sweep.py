"""`kdsr sweep`: many trainings of one recipe on Ray Tune, each arm's configuration chosen on validation only,
its test read once.

A sweep names a base train config, arms (ID only, fused, distilled, ...) each with fixed keys, a grid and single
configurations (`points`), and seeds. Every (arm, configuration, seed) is one trial: one training through the
same recipe as `kdsr train`, in `out_dir/trials/<arm>/<config>-seed<s>` (with its log, trial.log). Trials run
as Ray Tune trials on the embedded local Ray by default (`trial_cpus` cores and torch threads each, as many at
once as the cores allow) or on a cluster (`ray.address`). A configuration is named by its own keys and values,
so a point added to a finished search trains alone.
A finished trial leaves `trial.json` and is skipped on a re-run; an interrupted one resumes from its checkpoint,
and an interrupted run (Ctrl-C) reports its state without reading any test. ASHA (`asha.enabled`) may stop weak
trials early; they count with the validation score they reached.

Selection: per arm, the configuration with the best mean over seeds of the trials' selected-epoch validation
NDCG@10 (the trainer's own early-stopping metric). With `search_seeds: k`, an arm's grid is searched on the
first k seeds only and its winner then trains on the remaining seeds (a cheaper search; the winner stays the
one chosen on the search seeds). ASHA compares every running trial, across arms too: use it within one arm's
search, not for a study whose arms differ in strength by design. Only the winners' checkpoints are then evaluated on
test, once (kept in `out_dir/test/`; read again if the trial is retrained, i.e. its trial.json is newer: a copy of
out_dir that does not keep timestamps reads it again, to the same numbers), and every arm's winner is set against
the baseline arm's, paired by seed and user, or by case under `eval.cases: per_item` (`trainer/significance.py`). A
point added to a finished search re-opens it: if the point wins, the test of the arm's former winner has been read
as well (its report says which configurations were tested). Results: `out_dir/results.md` and `results.json` (and
`report`, when set).
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import logging
import re
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from pydantic import Field, model_validator

from feature_store.config import RayConfig
from kdsr.config import Config, ConfigError, apply_overrides, config_to_dict, expand_env, validate_config
from kdsr.errors import KdsrError
from kdsr.files import write_json_atomic, write_text_atomic
from trainer.config import TrainConfig
from trainer.sweep_report import results_markdown, sd

log = logging.getLogger(__name__)

METRIC = "ndcg@10"  # selection metric, on validation: the trainer's early-stopping metric
SUMMARY_KEYS = ("key", "label", "valid_mean", "valid_sd", "n")  # of a configuration, in results.json
TRIAL_FILE = "trial.json"  # written last by a trial: its presence marks it done
TRIAL_LOG = "trial.log"  # a trial's own log, appended by each run of it, with the traceback of a failure
EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt)\b[^:]*:")  # a traceback's last line
INTERRUPTED = "interrupted before it finished (a re-run resumes it from its last epoch)"
PATH_KEYS = ("dataset", "out_dir")  # train keys that are paths (plus modalities.*.features)


class ArmConfig(Config):
    """One arm: train keys fixed for it (`set`), a grid (every combination of the listed values is one
    configuration) and single configurations (`points`) searched beside the grid. Keys are dotted train config
    keys, e.g. `model.fusion` or `distill.enabled`."""

    set: dict[str, Any] = {}
    grid: dict[str, list[Any]] = {}
    # More configurations, each a mapping of keys to values: a variant added to a finished search keeps the
    # grid's trials (a configuration is named by its own keys and values only).
    points: list[dict[str, Any]] = []

    @model_validator(mode="after")
    def _check(self) -> ArmConfig:
        empty = [k for k, v in self.grid.items() if not v]
        if empty:
            raise ValueError(f"grid keys without values: {', '.join(empty)}")
        searched = set(self.grid).union(*self.points)
        both = sorted(self.set.keys() & searched)
        if both:
            raise ValueError(f"keys both fixed and searched: {', '.join(both)}")
        configs = self.configurations()
        repeated = [c for i, c in enumerate(configs) if c in configs[:i]]
        if repeated:
            raise ValueError(f"a configuration is listed twice: {repeated[0]}")
        return self

    def configurations(self) -> list[dict[str, Any]]:
        """The grid's combinations (one empty configuration, the arm's `set` alone, without a grid), then the
        points."""
        names = list(self.grid)
        grid = [dict(zip(names, values)) for values in itertools.product(*(self.grid[k] for k in names))]
        return grid + [dict(p) for p in self.points]


class AshaConfig(Config):
    enabled: bool = False  # stop trials whose validation NDCG@10 trails at the rungs (Ray Tune's ASHA)
    grace_period: int = Field(5, gt=0)  # epochs every trial trains before it may be stopped
    reduction_factor: float = Field(2.0, gt=1)


class SweepConfig(Config):
    base: str  # a train config (configs/train/*.yaml) that every trial starts from
    out_dir: str  # trials/, test/, results.md, results.json
    arms: dict[str, ArmConfig]  # in order; keys fixed and searched per arm
    baseline: str | None = None  # the arm the lifts are measured against; null: the first arm
    seeds: list[int] = Field([0], min_length=1)  # every configuration is trained once per seed
    # Search each arm's grid on the first `search_seeds` seeds, then train the winner on the rest; null: every
    # configuration on every seed.
    search_seeds: int | None = Field(None, gt=0)
    set: dict[str, Any] = {}  # train keys fixed for every trial (epochs, patience, optim.loss, ...)
    trial_cpus: float = Field(1.0, gt=0)  # Ray CPUs of a trial; its torch threads: max(1, int(trial_cpus))
    trial_gpus: float = Field(0.0, ge=0)
    max_concurrent: int | None = Field(None, gt=0)  # null: as many as the cluster's resources allow
    asha: AshaConfig = AshaConfig()
    ray: RayConfig = RayConfig()
    test: bool = True  # evaluate each arm's winner on test (once); false: validation only
    # false: train nothing; select, test and report what is done so far (a study's state while it runs). An
    # arm's winner is tested only once its search is complete, so test never sees a configuration that loses
    # that search (a point added later re-opens it).
    train: bool = True
    bootstrap: int = Field(2000, ge=100)  # bootstrap resamples of the paired lifts
    report: str | None = None  # also write the results table here (e.g. bench/results/quality.md)

    @model_validator(mode="after")
    def _check(self) -> SweepConfig:
        if not self.arms:
            raise ValueError("arms: name at least one arm")
        if self.baseline is not None and self.baseline not in self.arms:
            raise ValueError(f"baseline {self.baseline!r} is not an arm (arms: {', '.join(self.arms)})")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds repeat: {self.seeds}")
        if self.search_seeds is not None and self.search_seeds > len(self.seeds):
            raise ValueError(f"search_seeds {self.search_seeds} > the {len(self.seeds)} seeds")
        return self

    @property
    def baseline_arm(self) -> str:
        return self.baseline or next(iter(self.arms))


@dataclass
class Trial:
    arm: str
    params: dict[str, Any]  # the configuration's searched keys (a grid combination or a point)
    seed: int
    config: dict  # the trial's full train config (validated, paths absolute)
    key: str = ""  # the configuration (arm + hash of params), shared by its seeds
    config_sha: str = ""  # of `config`: a finished trial of another config under this name is refused
    result: dict = field(default_factory=dict)  # trial.json once done

    @property
    def name(self) -> str:
        return f"{self.arm}/{self.key.split('/')[1]}-seed{self.seed}"

    @property
    def out(self) -> Path:
        return Path(self.config["out_dir"])

    @property
    def label(self) -> str:
        return ", ".join(f"{k}={_short(v)}" for k, v in self.params.items()) or "-"


def _short(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _sha(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:10]


def _override(key: str, value: Any) -> str:
    return f"{key}={value if isinstance(value, str) else json.dumps(value)}"


def _absolute(raw: dict) -> dict:
    """Paths resolved against the current directory: Tune runs trials in other working directories."""
    for key in PATH_KEYS:
        if raw.get(key):
            raw[key] = str(Path(raw[key]).expanduser().resolve())
    for m in raw.get("modalities") or []:
        if isinstance(m, dict) and m.get("features"):
            m["features"] = str(Path(m["features"]).expanduser().resolve())
    return raw


def plan_trials(cfg: SweepConfig, source: str = "<sweep>") -> list[Trial]:
    """Every trial's validated train config; a key that is not a train key, or a value of the wrong type, is a
    ConfigError naming the arm and key, before anything runs."""
    try:
        base = yaml.safe_load(Path(cfg.base).read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"{source}: base {cfg.base}: {e}") from None
    if not isinstance(base, dict):
        raise ConfigError(f"{source}: base {cfg.base} is not a YAML mapping")
    out_root = Path(cfg.out_dir).expanduser().resolve() / "trials"
    trials = []
    for arm, spec in cfg.arms.items():
        for params in spec.configurations():
            key = f"{arm}/{_sha(params)}"
            for seed in cfg.seeds:
                raw = json.loads(json.dumps(base))
                fixed = {**cfg.set, **spec.set, **params, "seed": seed, "eval.test": False, "progress": False}
                where = f"{source}: arm {arm!r}"
                try:
                    apply_overrides(raw, [_override(k, v) for k, v in fixed.items()], TrainConfig)
                except ConfigError as e:
                    raise ConfigError(f"{where}: {e}") from None
                raw["out_dir"] = str(out_root / arm / f"{key.split('/')[1]}-seed{seed}")
                train_cfg = validate_config(TrainConfig, _absolute(expand_env(raw)), source=f"{where} {params}")
                config = config_to_dict(train_cfg)
                trials.append(Trial(arm, params, seed, config, key, _sha(config)))
    return trials


def load_done(trials: list[Trial]) -> list[Trial]:
    """Fill in the results of finished trials; refuse a finished trial whose config is not the planned one
    (the base or the sweep changed under the same out_dir). Returns the trials left to run."""
    todo = []
    for t in trials:
        path = t.out / TRIAL_FILE
        if not path.exists():
            todo.append(t)
            continue
        result = json.loads(path.read_text())
        if result.get("config_sha") != t.config_sha and not _trained_as_planned(t):
            raise ConfigError(
                f"{path}: this trial was trained with another config (the base or the sweep changed); "
                "sweep into a new out_dir, or remove that trial's folder to retrain it"
            )
        t.result = result
    return todo


def _trained_as_planned(t: Trial) -> bool:
    """The trial's saved config.yaml, read with today's TrainConfig, is the planned config: a key added to the
    trainer since (its default filled in on both sides) does not make a finished trial stale."""
    try:
        saved = config_to_dict(TrainConfig.model_validate(yaml.safe_load((t.out / "config.yaml").read_text())))
    except (OSError, yaml.YAMLError, ValueError):
        return False
    return saved == t.config


def trial_record(t: Trial, by_scheduler: bool = False) -> dict:
    """trial.json from the trial's metrics.json: what selection and the results table need. Why it stopped is
    read from its history: early stopping, the epoch cap, or else (`by_scheduler`) ASHA; a trial that reaches
    its cap or its patience at the report where ASHA ends it was not cut short. Its time is that of its epochs
    (training and validation) over every run of it, so a trial resumed after a pause counts all of them."""
    m = json.loads((t.out / "metrics.json").read_text())
    history = m["valid_history"]
    best = next((h for h in history if h["epoch"] == m["selected_epoch"]), {})
    cfg = TrainConfig.model_validate(t.config)
    if len(history) and m["selected_epoch"] <= history[-1]["epoch"] - cfg.patience:
        stop = "patience"
    else:
        stop = "asha" if by_scheduler and len(history) < cfg.epochs else "cap"
    return {
        "arm": t.arm,
        "params": t.params,
        "seed": t.seed,
        "config_sha": t.config_sha,
        "status": "stopped" if stop == "asha" else "finished",
        "stop": stop,
        "epochs": len(history),
        "selected_epoch": m["selected_epoch"],
        "valid": {k: v for k, v in best.items() if "@" in k},
        "epoch_seconds": statistics.mean(h["seconds"] for h in history) if history else None,
        "seconds": round(sum(h["seconds"] + h.get("eval_seconds", 0.0) for h in history), 2),
    }


def run_trial(tune_config: dict, trials: dict[str, Trial], threads: int) -> None:
    """One Ray Tune trial: a training through the train recipe, reporting validation NDCG@10 every epoch."""
    import torch
    from accelerate.state import AcceleratorState
    from ray import tune

    from kdsr.logs import also_to_file, setup_logging
    from trainer.train import TrainRecipe

    setup_logging()
    torch.set_num_threads(threads)
    t = trials[tune_config["trial"]]
    with also_to_file(t.out / TRIAL_LOG):  # Tune keeps a trial's stderr only in Ray's session folder
        AcceleratorState._reset_state(True)
        recipe = TrainRecipe(TrainConfig.model_validate(t.config))
        recipe.on_epoch_end = lambda row: tune.report({METRIC: row[METRIC], "epoch": row["epoch"] + 1})
        recipe.setup()
        done = recipe.train()  # False: stopped by the KDSR_TEST_STOP_AFTER test hook, as if killed: not done
        recipe.cleanup()
        if done:
            write_json_atomic(t.out / TRIAL_FILE, trial_record(t))


def progress_callback(total: int, completed: set[str], errored: dict[str, str]):
    """A Tune callback that logs each trial's epochs and completions (the trials' own logs go to their folders,
    `TRIAL_LOG`), adds the completed trials' names to `completed`: finished, or
    stopped by the scheduler (a trial cut short by Ctrl-C never completes), and the failed ones in `errored`
    (name -> the error's message, `error_line`)."""
    from ray.tune import Callback

    class LogProgress(Callback):
        done = 0

        def on_trial_result(self, iteration, trials, trial, result, **info):
            log.info("sweep: %s epoch %d valid %s %.4f", trial.config["trial"], result["epoch"], METRIC, result[METRIC])

        def on_trial_complete(self, iteration, trials, trial, **info):
            self.done += 1
            completed.add(trial.config["trial"])
            log.info("sweep: %s done (%d of %d)", trial.config["trial"], self.done, total)

        def on_trial_error(self, iteration, trials, trial, **info):
            self.done += 1
            errored[trial.config["trial"]] = error_line(trial.error_file)
            log.warning("sweep: %s failed: %s", trial.config["trial"], errored[trial.config["trial"]])

    return LogProgress()


def error_line(error_file: str | None) -> str:
    """The message of a failed trial's error, from the error file Tune writes before it calls back: the last
    `Type: message` line of the traceback (a worker killed for memory ends with advice, not with its cause),
    else its last line."""
    text = Path(error_file).read_text() if error_file and Path(error_file).exists() else ""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    raised = [line for line in lines if EXCEPTION_LINE.match(line)]
    return (raised or lines or ["failed"])[-1]


@dataclass
class TuneOutcome:
    """What a Tune run left undone: each failed or unfinished trial with why, and whether the run was
    interrupted (Ctrl-C: Tune stops its trials and returns): then some trial neither completed nor failed."""

    failed: list[str] = field(default_factory=list)
    interrupted: bool = False


def run_on_tune(cfg: SweepConfig, todo: list[Trial]) -> TuneOutcome:
    """Run `todo` as Ray Tune trials; trials the scheduler (ASHA) ended get their trial.json here. Returns what
    was left undone: trials that failed, were interrupted or stopped before their first epoch (none of them is
    recorded as done)."""
    from ray import tune

    from feature_store.encode import init_ray

    started = init_ray(cfg.ray)
    try:
        import ray

        threads = max(1, int(cfg.trial_cpus))
        by_name = {t.name: t for t in todo}
        completed: set[str] = set()
        errored: dict[str, str] = {}
        trainable = tune.with_resources(
            tune.with_parameters(run_trial, trials=by_name, threads=threads),
            {"cpu": cfg.trial_cpus, "gpu": cfg.trial_gpus},
        )
        scheduler = None
        if cfg.asha.enabled:
            scheduler = tune.schedulers.ASHAScheduler(
                time_attr="epoch",
                max_t=max(TrainConfig.model_validate(t.config).epochs for t in todo),
                grace_period=cfg.asha.grace_period,
                reduction_factor=cfg.asha.reduction_factor,
            )
        slots = cfg.max_concurrent or max(1, int(ray.cluster_resources().get("CPU", 1) // cfg.trial_cpus))
        log.info("sweep: %d trials to run, up to %d at a time, %d torch threads each", len(todo), slots, threads)
        tuner = tune.Tuner(
            trainable,
            param_space={"trial": tune.grid_search(list(by_name))},
            tune_config=tune.TuneConfig(
                metric=METRIC, mode="max", scheduler=scheduler, max_concurrent_trials=slots, reuse_actors=False
            ),
            run_config=tune.RunConfig(
                name="tune",
                storage_path=str(Path(cfg.out_dir).resolve()),
                verbose=0,
                # False: Tune's copy of a trial's stderr stays in Ray's session folder, and the closed copy
                # warns ~40 times when the trial ends. Each trial keeps its own log, TRIAL_LOG.
                log_to_file=False,
                callbacks=[progress_callback(len(todo), completed, errored)],
            ),
        )
        with contextlib.redirect_stdout(sys.stderr):  # Tune's tables; stdout carries the stage's summary only
            tuner.fit()
    finally:
        if started:
            ray.shutdown()
    # Go by the planned trials: one that reported nothing (pending, or cut short) is in neither record
    outcome = TuneOutcome()
    for t in todo:
        if (t.out / TRIAL_FILE).exists():
            continue
        if t.name in errored:
            outcome.failed.append(f"{t.name}: {errored[t.name]} (its log: {t.out / TRIAL_LOG})")
        elif t.name not in completed:  # the run was interrupted: not a result, a re-run resumes it
            outcome.failed.append(f"{t.name}: {INTERRUPTED}")
            outcome.interrupted = True
        elif (t.out / "metrics.json").exists():  # ended by ASHA after an epoch (cut short, or at its cap)
            write_json_atomic(t.out / TRIAL_FILE, trial_record(t, by_scheduler=True))
        else:
            outcome.failed.append(f"{t.name}: stopped before its first epoch ended")
    return outcome


def select(cfg: SweepConfig, trials: list[Trial], chosen: dict[str, str] | None = None) -> dict[str, dict]:
    """Per arm, every configuration's validation mean over its done seeds, and the winner: the best mean, or
    the configuration key `chosen[arm]` (chosen on the search seeds)."""
    arms: dict[str, dict] = {}
    for arm in cfg.arms:
        configs: dict[str, dict] = {}
        for t in trials:
            if t.arm != arm:
                continue
            c = configs.setdefault(t.key, {"key": t.key, "label": t.label, "params": t.params, "trials": []})
            if t.result:
                c["trials"].append(t)
        rows = []
        for c in configs.values():
            values = [t.result["valid"][METRIC] for t in c["trials"]]
            if values:
                rows.append(c | {"valid_mean": statistics.mean(values), "valid_sd": sd(values), "n": len(values)})
        winner = max(rows, key=lambda r: r["valid_mean"]) if rows else None
        if chosen and arm in chosen:
            winner = next(r for r in rows if r["key"] == chosen[arm])
        arms[arm] = {"configurations": rows, "winner": winner}
    return arms


def test_winners(cfg: SweepConfig, arms: dict[str, dict]) -> dict[str, dict[int, dict]]:
    """Each winner's trials evaluated on test once: {arm: {seed: {"metrics": ..., "users": path}}}. A winner's
    test result is kept in out_dir/test/ and reused while that configuration stays the winner and its trial is
    not trained again (a trial.json newer than the kept result: retrained under the same name)."""
    from accelerate.state import AcceleratorState

    from trainer.evaluate import evaluate_config
    from trainer.features import compare_run_inputs
    from trainer.train import TrainRecipe

    root = Path(cfg.out_dir) / "test"
    out: dict[str, dict[int, dict]] = {}
    for arm, info in arms.items():
        if not info["winner"]:
            continue
        for t in info["winner"]["trials"]:
            path = root / f"{t.name.replace('/', '-')}.npz"
            if not path.exists() or path.stat().st_mtime < (t.out / TRIAL_FILE).stat().st_mtime:
                log.info("sweep: reading test once for %s (%s)", t.name, t.label)
                AcceleratorState._reset_state(True)
                recipe = TrainRecipe(evaluate_config(t.out, ["progress=false"]))
                recipe.setup(write_config=False)
                compare_run_inputs(t.out, recipe.state.inputs, skip="retrain the trial, or restore its inputs")
                recipe.load_best()
                users = {k: v.numpy() for k, v in recipe.evaluate_users("test").items()}
                recipe.accelerator.end_training()
                AcceleratorState._reset_state(True)
                root.mkdir(parents=True, exist_ok=True)
                tmp = path.with_name(path.stem + ".tmp.npz")
                np.savez(tmp, **{k.replace("@", "_at_"): v for k, v in users.items()})
                tmp.rename(path)
            with np.load(path) as z:
                users = {k.replace("_at_", "@"): z[k] for k in z.files}
            out.setdefault(arm, {})[t.seed] = {
                "metrics": {k: float(v.mean()) for k, v in users.items()},
                "users": users,
            }
    return out


def _paired(cfg: SweepConfig, runs: dict[int, dict], base: dict[int, dict]) -> dict[str, dict] | None:
    """One winner against another on test NDCG@10 and HR@10, paired by their common seeds and by user."""
    from trainer.significance import paired_lift

    seeds = sorted(set(runs) & set(base))
    if not seeds:
        return None
    return {
        m: paired_lift(
            [runs[s]["users"][m] for s in seeds], [base[s]["users"][m] for s in seeds], cfg.bootstrap
        ).as_dict()
        for m in ("ndcg@10", "hr@10")
    }


def lifts(cfg: SweepConfig, tested: dict[str, dict[int, dict]]) -> dict[str, dict]:
    """Each arm's winner against the baseline's, paired by seed and user, on test NDCG@10 and HR@10."""
    base = tested.get(cfg.baseline_arm, {})
    out = {arm: _paired(cfg, runs, base) for arm, runs in tested.items() if arm != cfg.baseline_arm}
    return {arm: lift for arm, lift in out.items() if lift}


def pairwise(cfg: SweepConfig, tested: dict[str, dict[int, dict]], known: dict[str, dict]) -> list[dict]:
    """Every later arm's winner against every earlier one's (e.g. distilled vs fused), as `lifts` pairs them;
    `known`: lifts(cfg, tested), reused for the pairs with the baseline."""
    arms = [a for a in cfg.arms if a in tested]
    out = []
    for i, arm in enumerate(arms):
        for other in arms[:i]:
            reuse = other == cfg.baseline_arm and arm in known
            lift = known[arm] if reuse else _paired(cfg, tested[arm], tested[other])
            if lift:
                out.append({"arm": arm, "vs": other, **lift})
    return out


def retention(arms: dict[str, dict]) -> dict[str, dict[str, list[float]]]:
    """What each winner's trained V^m kept of the stored features, on its first seed: {arm: {modality: [row
    cosine, pair-cosine r, next-item kNN NDCG@10 of the stored table, of the trained table]}}, the kNN on
    validation (trainer/retention.py); arms without modalities are left out."""
    from trainer.retention import read_run, run_knn, run_retention

    out = {}
    for arm, a in arms.items():
        if a["winner"] and a["winner"]["trials"]:
            run = min(a["winner"]["trials"], key=lambda t: t.seed).out
            read = read_run(run)
            if not read.tables:
                continue
            kept, knn = run_retention(read), run_knn(read, "valid")
            out[arm] = {
                m: [round(v, 4) for v in (row, pair, knn[f"stored {m}"], knn[f"trained {m}"])]
                for m, (row, pair) in kept.items()
            }
    return out


def run_sweep(cfg: SweepConfig, source: str = "<sweep>") -> dict:
    """Plan, run what is not done, select on validation, test the winners once, write the results."""
    planned = plan_trials(cfg, source)
    search, waiting = split_search(cfg, planned)
    confirm = waiting
    todo = load_done(search)
    log.info("sweep: %d trials, %d done, %d to run -> %s", len(search), len(search) - len(todo), len(todo), cfg.out_dir)
    ran, outcome = 0, TuneOutcome()
    if todo and cfg.train:
        outcome = run_on_tune(cfg, todo)
        load_done(todo)
        ran = len(todo)
    searched = {arm for arm in cfg.arms if all(t.result for t in search if t.arm == arm)}
    chosen = None
    if confirm and not outcome.failed and searched == set(cfg.arms):  # winners chosen: train them on the other seeds
        chosen = {arm: a["winner"]["key"] for arm, a in select(cfg, search).items() if a["winner"]}
        confirm = [t for t in confirm if chosen.get(t.arm) == t.key]
        todo = load_done(confirm)
        log.info("sweep: the winners on the remaining seeds: %d trials, %d to run", len(confirm), len(todo))
        if todo and cfg.train:
            outcome = run_on_tune(cfg, todo)
            load_done(todo)
            ran += len(todo)
    trials = search + (confirm if chosen else [])
    arms = select(cfg, trials, chosen)
    # Ctrl-C: report the state and stop; test and the retention table wait for a run that is not interrupted
    failed, interrupted = outcome.failed, outcome.interrupted
    if interrupted:
        log.warning("sweep: interrupted: the winners' test and retention are left for a re-run")
    ready = {a: v for a, v in arms.items() if a in searched}
    tested = test_winners(cfg, ready) if cfg.test and not interrupted else {}
    # a complete sweep: the search, plus each searched arm's winner on every later seed
    expected = len(search) + len({(t.arm, t.seed) for t in waiting})
    done = sum(bool(t.result) for t in trials)
    vs_baseline = lifts(cfg, tested)
    result = {
        "sweep": source,
        "base": cfg.base,
        "seeds": cfg.seeds,
        "trials_done": f"{done} of {expected}",
        "selection": f"valid {METRIC}, mean over seeds"
        + (f"; grids searched on the first {cfg.search_seeds} seed(s)" if confirm_used(cfg) else ""),
        "baseline": cfg.baseline_arm,
        "trials": [t.result | {"name": t.name} for t in trials if t.result],
        "failed": failed,
        "arms": {
            arm: {
                "configurations": [{k: r[k] for k in SUMMARY_KEYS} for r in a["configurations"]],
                "winner": a["winner"] and a["winner"]["label"],
                "test": {s: v["metrics"] for s, v in tested.get(arm, {}).items()},
            }
            for arm, a in arms.items()
        },
        "lifts": vs_baseline,
        "pairwise": pairwise(cfg, tested, vs_baseline),
        "retention": {} if interrupted else retention(arms),
    }
    out = Path(cfg.out_dir)
    write_json_atomic(out / "results.json", result)
    text = results_markdown(cfg, result, trials)
    write_text_atomic(out / "results.md", text)
    if cfg.report:
        write_text_atomic(Path(cfg.report), text)
    if failed:
        raise KdsrError(f"{len(failed)} trials failed (the others are in {out / 'results.md'}): " + "; ".join(failed))
    winners = {arm: a["winner"] for arm, a in result["arms"].items()}
    return {"output": str(out), "trials": len(trials), "ran": ran, "winners": winners}


def confirm_used(cfg: SweepConfig) -> bool:
    return cfg.search_seeds is not None and cfg.search_seeds < len(cfg.seeds)


def split_search(cfg: SweepConfig, trials: list[Trial]) -> tuple[list[Trial], list[Trial]]:
    """(search, confirm): with `search_seeds`, the trials of arms with several configurations on the later
    seeds wait for the search on the first seeds (only the winner's run); arms of one configuration and every
    trial without `search_seeds` are all search."""
    if not confirm_used(cfg):
        return trials, []
    later = set(cfg.seeds[cfg.search_seeds :])
    configs = {arm: {t.key for t in trials if t.arm == arm} for arm in cfg.arms}
    waits = [t.seed in later and len(configs[t.arm]) > 1 for t in trials]
    return [t for t, w in zip(trials, waits) if not w], [t for t, w in zip(trials, waits) if w]
