"""`kdsr pipeline CONFIG [key=value ...] [--force]`: prepare -> encode -> dissect -> train (several
variants) -> report, cached stage by stage.

    kdsr pipeline configs/pipeline/beauty-minilm.yaml            # what `make demo` runs
    python -m jobs.pipeline configs/pipeline/beauty-minilm.yaml --force

Each stage runs from its own config file (plus overrides) through the same function as its `kdsr <stage>`
command. A stage is skipped when its output exists and its cache key is unchanged; the key hashes the stage's
resolved config and the keys of the stages it reads, so editing the prepare config re-runs everything after
it, while editing only a train config re-runs only that training.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import Field

from dissect.config import DissectConfig
from feature_store.config import EncodeConfig
from kdsr.config import Config, config_to_dict, load_config, save_config
from kdsr.entry import run_stage
from kdsr.files import write_json_atomic
from prepare.config import PrepareConfig
from trainer.config import TrainConfig

log = logging.getLogger(__name__)


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


def cache_key(cfg: Config, upstream: list[str]) -> str:
    blob = json.dumps({"config": config_to_dict(cfg), "upstream": upstream}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class Pipeline:
    def __init__(self, cfg: PipelineConfig, force: bool = False):
        self.cfg = cfg
        self.out = Path(cfg.out_dir)
        self.force = force
        self.record_path = self.out / "stages.json"
        self.record: dict[str, Any] = self._read_record()
        self.results: dict[str, StageResult] = {}

    def _read_record(self) -> dict[str, Any]:
        """The cache record; an unreadable one (a crash of an older version mid-write) only costs a re-run."""
        if not self.record_path.exists():
            return {}
        try:
            return json.loads(self.record_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            log.warning("%s is unreadable; every stage runs again", self.record_path)
            return {}

    def stage(
        self,
        name: str,
        cfg: Config,
        ref: StageRef,
        extra: list[str],
        upstream: list[str],
        output: str,
        run: Callable[[Any], Any],
        restart_on_change: bool = False,
        replaces_output: bool = False,
    ) -> StageResult:
        """Run one stage unless its output exists under the same cache key. `replaces_output`: the stage's
        output is this pipeline's own (a new key rebuilds it), so its `overwrite` is set, before the key is taken
        so keys stay those of earlier versions (the store still refuses a path holding what kdsr did not write)."""
        if replaces_output:
            cfg.overwrite = True
        key = cache_key(cfg, upstream)
        seen = self.record.get(name, {})
        if not self.force and seen.get("key") == key and seen.get("done") and Path(output).exists():
            log.info("%s: cached (config and inputs unchanged) -> %s", name, output)
            if seen.get("summary"):
                log.info("%s: %s", name, json.dumps(seen["summary"], default=str))
            result = StageResult(name, Path(output), key, True, 0.0)
        else:
            log.info("%s: running %s -> %s", name, ref.config, output)
            if restart_on_change and seen.get("key") != key:
                # Inputs or config changed since the checkpoint there was written: resuming it would report
                # a model trained on the old inputs. (Same key, not done: an interrupted run, which resumes.)
                cfg.resume = False
            t0 = time.perf_counter()
            summary = run(cfg)
            result = StageResult(name, Path(output), key, False, time.perf_counter() - t0)
            # the line the stage prints on its own (`kdsr prepare ...`), so the pipeline's log reads the same
            log.info("%s: done in %.0f s: %s", name, result.seconds, json.dumps(summary, default=str))
            self.record[name] = {
                "key": key,
                "done": True,
                "output": output,
                "seconds": round(result.seconds, 1),
                "config": ref.config,
                "overrides": [*ref.overrides, *extra],
                "summary": json.loads(json.dumps(summary, default=str)),
            }
            write_json_atomic(self.record_path, self.record)
        self.results[name] = result
        return result

    def run(self) -> dict:
        from dissect.run import run_dissect
        from feature_store.encode import run_encode
        from jobs.report import write_report
        from prepare.run import run_prepare
        from trainer.train import run_train

        c = self.cfg
        self.out.mkdir(parents=True, exist_ok=True)
        save_config(c, self.out, "pipeline.yaml")

        def load(schema: type, ref: StageRef, extra: list[str]) -> Any:
            return load_config(schema, ref.config, [*ref.overrides, *extra])

        prep_cfg = load(PrepareConfig, c.prepare, [])
        data = self.stage("prepare", prep_cfg, c.prepare, [], [], prep_cfg.output_dir, run_prepare)
        extra = [f"dataset={data.output}"]
        enc_cfg = load(EncodeConfig, c.encode, extra)
        feats = self.stage("encode", enc_cfg, c.encode, extra, [data.key], enc_cfg.output.path, run_encode)
        extra = [f"features={feats.output}", f"dataset={data.output}"]
        dis_cfg = load(DissectConfig, c.dissect, extra)
        out = dis_cfg.resolved_output()
        diss = self.stage("dissect", dis_cfg, c.dissect, extra, [feats.key], out, run_dissect, replaces_output=True)
        runs = []
        for variant in c.train:
            base = load(TrainConfig, variant, [])
            features = [
                f"modalities.{i}.features={diss.output}" for i, m in enumerate(base.modalities) if m.name == c.modality
            ]
            extra = [f"dataset={data.output}", *features, *c.train_overrides]
            upstream = [data.key, diss.key] if features else [data.key]  # an ID-only run does not read features
            train_cfg = load(TrainConfig, variant, extra)
            name = f"train:{variant.label}"
            runs.append(self.stage(name, train_cfg, variant, extra, upstream, train_cfg.out_dir, run_train, True))
        labelled = [(v.label, r.output) for v, r in zip(c.train, runs)]
        report = write_report(c, self.results, data.output, diss.output, labelled)
        log.info("report: %s", report)
        return {
            "output": str(report),
            "stages": {n: {"cached": r.cached, "output": str(r.output)} for n, r in self.results.items()},
        }


def main(argv: list[str] | None = None) -> int:
    force = False

    def load(args: list[str]) -> PipelineConfig:
        nonlocal force
        parser = argparse.ArgumentParser(prog="kdsr pipeline", description=__doc__.splitlines()[0])
        parser.add_argument("config")
        parser.add_argument("overrides", nargs="*", help="key.sub=value overrides of the pipeline config")
        parser.add_argument("--force", action="store_true", help="re-run every stage even when cached")
        ns = parser.parse_args(args)
        force = ns.force
        return load_config(PipelineConfig, ns.config, ns.overrides)

    return run_stage("pipeline", __doc__, argv, load, lambda cfg: Pipeline(cfg, force).run())


if __name__ == "__main__":
    sys.exit(main())
