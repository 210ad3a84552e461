"""`kdsr pipeline`: prepare -> encode -> dissect -> train (several variants) -> report, cached by stage.

Each stage runs from its own config file (plus overrides) exactly as its `kdsr <stage>` command would. A
stage is skipped when its output exists and its cache key is unchanged; the key hashes the stage's resolved
config and the keys of the stages it reads, so editing the prepare config re-runs everything after it,
while editing only a train config re-runs only that training.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import Field

from jobs.stages import schema_for
from kdsr.config import Config, config_to_dict, load_config, save_config


class StageRef(Config):
    """A stage's config file and the single-key overrides applied to it."""

    config: str
    overrides: list[str] = []


class TrainVariant(StageRef):
    label: str  # the row name in the report's comparison table


class PipelineConfig(Config):
    """The whole job: one config per stage, several training variants, a report folder."""

    name: str
    out_dir: str  # report.md, figures, stages.json (the cache record)
    prepare: StageRef
    encode: StageRef
    dissect: StageRef
    train: list[TrainVariant] = Field(min_length=1)
    # The train variants' modality of this name reads the dissection built here (its `features` path is
    # replaced), so a pipeline on another dataset needs no edited copies of the train configs.
    modality: str = "text"
    # Applied to every train variant after its own overrides (e.g. a shorter budget for the demo).
    train_overrides: list[str] = []


@dataclass
class StageResult:
    name: str
    output: Path
    key: str
    cached: bool
    seconds: float


def _key(cfg: Config, upstream: list[str]) -> str:
    blob = json.dumps({"config": config_to_dict(cfg), "upstream": upstream}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class Pipeline:
    def __init__(self, cfg: PipelineConfig, force: bool = False):
        self.cfg = cfg
        self.out = Path(cfg.out_dir)
        self.force = force
        self.record_path = self.out / "stages.json"
        self.record: dict[str, Any] = json.loads(self.record_path.read_text()) if self.record_path.exists() else {}
        self.results: dict[str, StageResult] = {}

    def _stage(
        self,
        name: str,
        stage: str,
        ref: StageRef,
        upstream: list[str],
        extra: list[str],
        output_of: Callable[[Any], str],
        run: Callable[[Any], Any],
        restart_on_change: bool = False,
    ) -> StageResult:
        cfg = load_config(schema_for(stage), ref.config, [*ref.overrides, *extra])
        key = _key(cfg, upstream)
        output = Path(output_of(cfg))
        seen = self.record.get(name, {})
        if not self.force and seen.get("key") == key and seen.get("done") and output.exists():
            print(f"[pipeline] {name}: cached (config and inputs unchanged) -> {output}", flush=True)
            result = StageResult(name, output, key, True, 0.0)
        else:
            print(f"[pipeline] {name}: running {stage} {ref.config} -> {output}", flush=True)
            if restart_on_change and seen.get("key") != key:
                # Inputs or config changed since the checkpoint there was written: resuming it would report
                # a model trained on the old inputs. (Same key, not done: an interrupted run, which resumes.)
                cfg.resume = False
            t0 = time.perf_counter()
            run(cfg)
            result = StageResult(name, output, key, False, time.perf_counter() - t0)
            self.record[name] = {
                "key": key,
                "done": True,
                "output": str(output),
                "seconds": round(result.seconds, 1),
                "config": ref.config,
                "overrides": [*ref.overrides, *extra],
            }
            self.out.mkdir(parents=True, exist_ok=True)
            self.record_path.write_text(json.dumps(self.record, indent=2))
        self.results[name] = result
        return result

    def run(self) -> Path:
        from dissect.run import default_output, dissect
        from feature_store.encode import run_encode
        from prepare.run import prepare

        c = self.cfg
        self.out.mkdir(parents=True, exist_ok=True)
        save_config(c, self.out, "pipeline.yaml")
        data = self._stage("prepare", "prepare", c.prepare, [], [], lambda p: p.output_dir, prepare)
        feats = self._stage(
            "encode", "encode", c.encode, [data.key], [f"dataset={data.output}"], lambda e: e.output.path, run_encode
        )
        diss = self._stage(
            "dissect",
            "dissect",
            c.dissect,
            [feats.key],
            [f"features={feats.output}", f"dataset={data.output}"],
            lambda d: d.output or default_output(d.features),
            dissect,
        )
        runs = []
        for variant in c.train:
            base = load_config(schema_for("train"), variant.config, variant.overrides)
            features = [
                f"modalities.{i}.features={diss.output}" for i, m in enumerate(base.modalities) if m.name == c.modality
            ]
            extra = [f"dataset={data.output}", *features, *c.train_overrides]
            upstream = [data.key, diss.key] if features else [data.key]  # an ID-only run does not read features
            runs.append(
                self._stage(
                    f"train:{variant.label}",
                    "train",
                    variant,
                    upstream,
                    extra,
                    lambda t: t.out_dir,
                    _train,
                    restart_on_change=True,
                )
            )
        from jobs.report import write_report

        report = write_report(
            self.cfg, self.results, data.output, diss.output, [(v.label, r.output) for v, r in zip(c.train, runs)]
        )
        return report


def _train(cfg: Any) -> None:
    from trainer.train import TrainRecipe

    recipe = TrainRecipe(cfg)
    recipe.setup()
    finished = recipe.train()
    recipe.cleanup()
    if not finished:
        raise RuntimeError(f"training {cfg.out_dir} stopped before the end (stop_after is set)")


def main(argv: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="kdsr pipeline", description=__doc__.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument("overrides", nargs="*", help="key.sub=value overrides of the pipeline config")
    parser.add_argument("--force", action="store_true", help="re-run every stage even when cached")
    args = parser.parse_args(argv)
    from feature_store.models import ModelError
    from feature_store.store import StoreError
    from kdsr.config import ConfigError
    from kdsr.dataset import DatasetError
    from prepare.readers import InputError

    try:
        cfg = load_config(PipelineConfig, args.config, args.overrides)
        report = Pipeline(cfg, force=args.force).run()
    except (ConfigError, StoreError, ModelError, DatasetError, InputError, FileNotFoundError) as e:
        print(f"kdsr pipeline: {e}", file=sys.stderr)
        return 2
    print(f"\nreport: {report}")
    return 0
