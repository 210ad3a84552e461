"""The GPU path, proven: one command on a CUDA machine measures what the CPU benchmarks cannot.

    python -m bench.gpu_check                     # CUDA; < 8 min on one modern GPU; writes bench/results/gpu.md
    python -m bench.gpu_check --dry-run           # CPU, tiny model, < 1 min: the same code paths, no figures

Sections, each timed and guarded (a failure is recorded in the report and the check goes on; a section that
would not fit in what is left of --budget-s is skipped and says so):

1. setup: prepare Amazon Beauty; save a random-init decoder LLM with the real 7B dimensions (Llama-2-7B or
   Qwen2.5-7B config) so that `feature_store/models.py` loads it exactly as it loads a downloaded one.
2. encode: 2,000 Beauty titles with configs/encode/llm-8bit.yaml's settings (last-token pooling, max_length
   128) in bf16, int8 and nf4: items/s, tokens/s, fraction of the FLOP limit (2 x params x tokens against the
   GPU's published dense bf16 peak), peak GPU memory against the planner's weights, cosine of int8 / nf4 to bf16.
   A precision the planner says does not fit the GPU is refused with the planner's message, before loading.
3. ray: the same titles through `kdsr encode` (feature_store.encode.run_encode), bf16: the pipeline's overhead.
4. sharding: the model split by a max_memory map (two GPUs, else GPU + CPU offload) vs the unsharded embeddings.
5. dissect: random features imported into a store and dissected (dissect/ runs on CPU: it has no device option).
6. teacher: the trainer's teacher targets on CUDA vs CPU (what tests/test_teacher.py's skipped CUDA test checks).
7. train: Beauty SASRec with correlation distillation, fp32 and bf16, and one run with loss sampled_softmax.

The LLM has random weights and all-MiniLM-L6-v2's WordPiece tokenizer (no Llama tokenizer is available
offline): speed and memory are those of a real 7B model; cosines of quantized to bf16 embeddings are those of
random weights, not of a trained model.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import logging
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bench.bench_encode import cosine
from feature_store.planner import PlanError

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results" / "gpu.md"
PREPARE_CONFIG = REPO / "configs" / "prepare" / "beauty.yaml"
ENCODE_CONFIG = REPO / "configs" / "encode" / "llm-8bit.yaml"
DISSECT_CONFIG = REPO / "configs" / "dissect" / "beauty-minilm.yaml"
TRAIN_CONFIG = REPO / "configs" / "train" / "beauty-sasrec-kd.yaml"
TOKENIZER_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
GIB = 1 << 30

# The real 7B dimensions (the models' published config.json); weights are random.
ARCHS = {
    "llama": (
        "LlamaConfig",
        "Llama-2-7B",
        dict(
            vocab_size=32000,
            hidden_size=4096,
            intermediate_size=11008,
            num_hidden_layers=32,
            num_attention_heads=32,
            num_key_value_heads=32,
            max_position_embeddings=4096,
            rms_norm_eps=1e-5,
        ),
    ),
    "qwen2": (
        "Qwen2Config",
        "Qwen2.5-7B",
        dict(
            vocab_size=152064,
            hidden_size=3584,
            intermediate_size=18944,
            num_hidden_layers=28,
            num_attention_heads=28,
            num_key_value_heads=4,
            max_position_embeddings=32768,
            rms_norm_eps=1e-6,
            rope_theta=1e6,
        ),
    ),
}
TINY = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=128,
)

# Published dense (no sparsity) bf16 tensor-core peaks, TFLOP/s, by a token of the device name; an H100 is
# the SXM part unless its name says PCIe or NVL. Unknown devices: no fraction ("n/a").
PEAK_TFLOPS = {"B200": 2250.0, "H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0, "A10": 125.0}
H100_VARIANTS = {"PCIe": 756.0, "NVL": 835.0}

# Seconds a section is expected to need on one modern GPU / in the dry run: a section is skipped when less
# than this is left of the budget.
ESTIMATE_S = {
    "setup": (90, 20),
    "encode bf16": (45, 10),
    "encode int8": (90, 5),
    "encode nf4": (75, 5),
    "ray": (75, 25),
    "sharding": (75, 10),
    "dissect": (60, 10),
    "teacher": (15, 5),
    "train": (60, 10),
}


def peak_tflops(device_name: str) -> float | None:
    """Dense bf16 peak of a GPU by name (e.g. 'NVIDIA H100 80GB HBM3'), None when not in the table."""
    tokens = re.split(r"[\s\-_]+", device_name)
    for key, tflops in PEAK_TFLOPS.items():
        if key in tokens:
            if key == "H100":
                return next((v for k, v in H100_VARIANTS.items() if k in tokens), tflops)
            return tflops
    return None


class Skip(Exception):
    """A section that cannot run here (e.g. needs CUDA); the message says why."""


@dataclass
class Section:
    name: str
    status: str = "not run"  # ok | failed | skipped | does not fit
    seconds: float = 0.0
    headline: str = ""  # one line for the summary table
    lines: list[str] = field(default_factory=list)  # details (markdown)
    error: str = ""


@dataclass
class Encoded:
    """One in-process encode: the numbers of the report row and the embeddings for the cosines."""

    emb: np.ndarray
    row: dict


class GpuCheck:
    """Runs the sections in order and keeps what later sections need (dataset, model, embeddings)."""

    def __init__(self, args: argparse.Namespace, work: Path):
        import torch

        self.args, self.work, self.dry = args, work, args.dry_run
        self.device = "cpu" if self.dry else "cuda"
        self.t0 = time.perf_counter()
        self.sections: list[Section] = []
        self.dataset: Path | None = None
        self.model_dir: Path | None = None
        self.n_params = 0
        self.encoded: dict[str, Encoded] = {}
        self.dissection: Path | None = None
        self.gpu_name = torch.cuda.get_device_name(0) if not self.dry else "none (dry run on CPU)"
        # what the planner plans for: the GPU's memory (the dry run plans against host memory)
        device_gib = torch.cuda.get_device_properties(0).total_memory / GIB if not self.dry else host_memory_gib()
        self.gpu_gib = args.gpu_memory_gib or device_gib
        self.peak = None if self.dry else peak_tflops(self.gpu_name)

    # ---- the guard around every section --------------------------------------------------------------
    def left_s(self) -> float:
        return self.args.budget_s - (time.perf_counter() - self.t0)

    def run(self, name: str, fn: Callable[[Section], None], estimate_key: str | None = None) -> Section:
        sec = Section(name)
        self.sections.append(sec)
        need = ESTIMATE_S[estimate_key or name][1 if self.dry else 0]
        left = self.left_s()
        if left < need:
            sec.status, sec.headline = "skipped", f"skipped: needs ~{need} s, {max(left, 0):.0f} s of the budget left"
            log.warning("%s: %s", name, sec.headline)
            return sec
        log.info("%s: starting (%.0f s of the budget left)", name, left)
        t = time.perf_counter()
        try:
            fn(sec)
            sec.status = "ok"
        except Skip as e:
            sec.status, sec.headline = "skipped", f"skipped: {e}"
        except PlanError as e:
            sec.status, sec.headline = "does not fit", f"does not fit (planner, before loading): {e}"
        except Exception as e:  # a section's failure is a result: record it and go on
            log.exception("%s failed", name)
            sec.status, sec.error = "failed", f"{type(e).__name__}: {e}".splitlines()[0][:500]
            sec.headline = f"failed: {sec.error}"
        finally:
            sec.seconds = time.perf_counter() - t
            self._free()
        log.info("%s: %s in %.1f s%s", name, sec.status, sec.seconds, f" ({sec.headline})" if sec.headline else "")
        return sec

    def _free(self) -> None:
        import gc

        import torch

        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def _sync(self) -> None:
        import torch

        if self.device == "cuda":
            torch.cuda.synchronize()

    def _reset_peak(self) -> None:
        import torch

        if self.device == "cuda":
            torch.cuda.reset_peak_memory_stats()

    def _peak_gib(self) -> float | None:
        import torch

        return torch.cuda.max_memory_allocated() / GIB if self.device == "cuda" else None

    def _needs(self, *what: str) -> None:
        missing = [w for w in what if getattr(self, w) is None]
        if missing:
            raise RuntimeError(f"needs the setup section's {', '.join(missing)}, which did not finish")

    # ---- 1. setup -----------------------------------------------------------------------------------
    def setup(self, sec: Section) -> None:
        from kdsr.config import load_config
        from prepare.config import PrepareConfig
        from prepare.run import run_prepare

        t = time.perf_counter()
        cfg = load_config(PrepareConfig, PREPARE_CONFIG, [f"output_dir={self.work / 'beauty'}"])
        prepared = run_prepare(cfg)
        self.dataset = Path(prepared["output"])
        prepare_s = time.perf_counter() - t
        t = time.perf_counter()
        self.model_dir, label = build_llm(self.work / "llm", self.args.arch, tiny=self.dry, device=self.device)
        from feature_store.models import count_parameters, resolve_model

        enc = self.encoder_config("none")
        self.n_params = count_parameters(resolve_model(enc.model, with_hash=False), enc)
        sec.headline = (
            f"{label}: {self.n_params / 1e9:.3g}B parameters (no LM head), saved in {time.perf_counter() - t:.0f} s"
        )
        sec.lines = [
            f"- Beauty prepared with `{PREPARE_CONFIG.relative_to(REPO)}` in {prepare_s:.1f} s: "
            f"{prepared['n_users']:,} users, {prepared['n_items']:,} items.",
            f"- Model: {label}, random init, `save_pretrained` to a temp directory and loaded back through "
            f"`feature_store.models.load_model`; {self.n_params:,} parameters without the LM head; tokenizer: "
            "all-MiniLM-L6-v2's WordPiece (no Llama / Qwen tokenizer offline; token counts are those of WordPiece).",
        ]

    # ---- 2. encode in process -----------------------------------------------------------------------
    def encode_config(self, quantization: str, extra: list[str] = ()):
        from feature_store.config import EncodeConfig
        from kdsr.config import load_config

        overrides = [
            f"dataset={self.dataset}",
            f"encoder.model={self.model_dir}",
            "encoder.revision=null",
            f"encoder.quantization={quantization}",
            f"output.path={self.work / 'store'}",
            "output.overwrite=true",
            "ray.address=null",
            f"resources.device={self.device}",
            f"limit={self.args.items}",
            "resources.num_actors=1",  # one actor on one GPU: comparable with the in-process encode
        ]
        if self.args.gpu_memory_gib:
            overrides.append(f"resources.gpu_memory_gib={self.args.gpu_memory_gib}")
        if self.args.batch_size:
            overrides.append(f"encoder.batch_size={self.args.batch_size}")
        return load_config(EncodeConfig, ENCODE_CONFIG, [*overrides, *extra])

    def encoder_config(self, quantization: str):
        return self.encode_config(quantization).encoder

    def texts(self) -> list[str]:
        """The first --items titles rendered with the config's template (feature_store.encode.build_inputs)."""
        from feature_store.encode import build_inputs
        from kdsr.dataset import PreparedDataset

        _, inputs, _ = build_inputs(self.encode_config("none"), PreparedDataset.open(self.dataset))
        return [x for x in inputs if x is not None]

    def check_fits(self, quantization: str):
        """The planner's verdict for one GPU at this precision; raises PlanError with its message."""
        from feature_store.planner import plan_gpu

        enc = self.encode_config(quantization)
        return plan_gpu(self.n_params, enc.encoder.precision, quantization, self.gpu_gib, 1, enc.resources.headroom)

    def encode(self, quantization: str) -> Callable[[Section], None]:
        def section(sec: Section) -> None:
            self._needs("dataset", "model_dir")
            if quantization != "none" and self.device != "cuda":
                raise Skip("needs CUDA (bitsandbytes int8 / nf4 kernels)")
            plan = self.check_fits(quantization)  # before loading: a model that does not fit is refused here
            out = self.encode_in_process(self.encoder_config(quantization), plan.weight_gib)
            self.encoded[quantization] = out
            r = out.row
            if quantization != "none" and "none" in self.encoded:
                cos = cosine(out.emb, self.encoded["none"].emb)
                r["cos"] = f"{cos.min():.4f} / {cos.mean():.4f}"
            sec.headline = (
                f"{r['items_per_s']:.1f} items/s, {r['tokens_per_s']:,.0f} tokens/s, FLOP fraction {r['flop']}, "
                f"peak GPU {r['peak']} (planner weights {r['planned']:.3g} GiB)"
                + (f", cosine to bf16 min/mean {r['cos']}" if "cos" in r else "")
            )

        return section

    def encode_in_process(self, enc, planned_gib: float) -> Encoded:
        """load_model + TextEmbedder (the actor's own code) on this process's device, timed."""
        from feature_store.models import load_model, resolve_model
        from feature_store.text import TextEmbedder

        texts = self.texts()
        resolved = resolve_model(enc.model, with_hash=False)
        self._reset_peak()
        t = time.perf_counter()
        model, tok = load_model(enc, resolved, device=self.device)
        embedder = TextEmbedder(model, tok, enc, device=self.device)  # its probe call is the warm-up
        self._sync()
        load_s = time.perf_counter() - t
        t = time.perf_counter()
        emb = embedder.embed(texts)
        self._sync()
        seconds = time.perf_counter() - t
        tokens = sum(len(ids) for ids in tok(texts, truncation=True, max_length=enc.max_length)["input_ids"])
        flops = 2 * self.n_params * tokens / seconds
        peak = self._peak_gib()
        row = {
            "precision": enc.precision if enc.quantization == "none" else enc.quantization,
            "items": len(texts),
            "tokens": tokens,
            "load_s": load_s,
            "seconds": seconds,
            "items_per_s": len(texts) / seconds,
            "tokens_per_s": tokens / seconds,
            "tflops": flops / 1e12,
            "flop": f"{flops / 1e12 / self.peak:.1%}" if self.peak else "n/a",
            "peak": f"{peak:.2f} GiB" if peak is not None else "n/a (CPU)",
            "planned": planned_gib,
        }
        del model, embedder
        return Encoded(emb, row)

    # ---- 3. the Ray actor path ---------------------------------------------------------------------
    def ray(self, sec: Section) -> None:
        from feature_store.encode import run_encode
        from feature_store.store import FeatureStore

        self._needs("dataset", "model_dir")
        cfg = self.encode_config("none", [f"output.path={self.work / 'store-ray'}"])
        summary = run_encode(cfg)
        store = FeatureStore.open(cfg.output.path)
        emb = store.read_all()[store.mask()]  # the rows of usable titles, as in self.texts()
        sec.headline = (
            f"{summary['items_per_s']:.1f} items/s end to end (Ray start and model load included), "
            f"{summary['steady_items_per_s']:.1f} items/s after a {summary['startup_s']:.1f} s start-up"
        )
        sec.lines = [
            f"- `kdsr encode {ENCODE_CONFIG.relative_to(REPO)}` (bf16, no quantization), plan `{summary['plan']}`."
        ]
        if "none" in self.encoded:
            ref = self.encoded["none"]
            cos = cosine(emb[: len(ref.emb)], ref.emb)
            ratio = summary["steady_items_per_s"] / ref.row["items_per_s"]
            sec.headline += f"; steady state {ratio:.2f}x the in-process rate"
            sec.lines.append(
                f"- In-process bf16 encode: {ref.row['items_per_s']:.1f} items/s; Ray steady state / in-process "
                f"= {ratio:.2f}. Cosine of the store's rows (float16) to the in-process ones: min "
                f"{cos.min():.5f}, mean {cos.mean():.5f}."
            )

    # ---- 4. sharding -------------------------------------------------------------------------------
    def sharding(self, sec: Section) -> None:
        import torch

        from feature_store.planner import plan_gpu, weight_bytes
        from feature_store.text import TextEmbedder

        self._needs("dataset", "model_dir")
        if "none" not in self.encoded:
            raise RuntimeError("needs the unsharded bf16 embeddings of the 'encode bf16' section")
        enc = self.encoder_config("none")
        # weights as loaded: the configured dtype on CUDA, fp32 on CPU (bf16 runs as autocast there)
        need = weight_bytes(self.n_params, enc.precision if self.device == "cuda" else "fp32", "none")
        n_gpus = torch.cuda.device_count() if self.device == "cuda" else 0
        if n_gpus >= 2:  # the planner's own map for an actor holding two GPUs
            max_memory = plan_gpu(
                self.n_params, enc.precision, "none", self.gpu_gib, n_gpus, gpus_per_actor=2
            ).max_memory
            how = "split over two GPUs (the planner's max_memory map for 2 GPUs per actor)"
        elif n_gpus == 1:
            max_memory = {0: int(need / 2), "cpu": int(4 * need)}
            how = "GPU + CPU offload (max_memory: half the weights on GPU 0, the rest in host memory)"
        else:
            # the tiny model is 96% embedding: leave only the decoder layers out of host memory
            max_memory = {"cpu": int(0.99 * need)}
            how = "dry run: CPU + disk offload (max_memory: 99% of the weights in host memory, the rest on disk)"
        n = min(self.args.shard_items, len(self.encoded["none"].emb))
        texts = self.texts()[:n]
        self._reset_peak()
        t = time.perf_counter()
        model, tok = load_sharded(enc, self.device, max_memory, self.work / "offload")
        embedder = TextEmbedder(model, tok, enc, device=self.device)
        load_s = time.perf_counter() - t
        t = time.perf_counter()
        emb = embedder.embed(texts)
        self._sync()
        seconds = time.perf_counter() - t
        placement = dict(Counter(str(v) for v in model.hf_device_map.values()))
        if len(placement) < 2:
            raise RuntimeError(f"max_memory {max_memory} did not split the model: device map {placement}")
        cos = cosine(emb, self.encoded["none"].emb[:n])
        peak = self._peak_gib()
        sec.headline = (
            f"{how.split(' (')[0]}; modules per device {placement}; cosine to unsharded min {cos.min():.5f}, "
            f"mean {cos.mean():.5f}; {n / seconds:.1f} items/s"
        )
        sec.lines = [
            f"- {how}: {max_memory}.",
            f"- Load {load_s:.1f} s; {n} items in {seconds:.1f} s ({n / seconds:.1f} items/s); peak GPU "
            + (f"{peak:.2f} GiB" if peak is not None else "n/a (CPU)")
            + f"; unsharded in-process: {self.encoded['none'].row['items_per_s']:.1f} items/s.",
        ]
        del model, embedder

    # ---- 5. dissect and 6. teacher -----------------------------------------------------------------
    def dissect(self, sec: Section) -> None:
        from dissect.config import DissectConfig
        from dissect.run import run_dissect
        from feature_store.config import ImportConfig
        from feature_store.importer import run_import
        from kdsr.config import load_config
        from kdsr.dataset import PreparedDataset

        self._needs("dataset")
        ids = PreparedDataset.open(self.dataset).item_original_ids()
        x = np.random.default_rng(0).standard_normal((len(ids), 384)).astype(np.float32)
        src = self.work / "random-features.npy"
        np.save(src, x)
        (self.work / "random-features.ids").write_text("\n".join(ids) + "\n")
        store = self.work / "features" / "random384"
        run_import(
            ImportConfig(
                source=str(src),
                ids=str(src.with_suffix(".ids")),
                dataset=str(self.dataset),
                output={"path": str(store), "overwrite": True},
                provenance={"model": "random (bench/gpu_check.py)"},
            )
        )
        small = ["codebook.random_pairs=5000", "codebook.cooccur_pairs=5000", "codebook.n_init=1"] if self.dry else []
        cfg = load_config(
            DissectConfig,
            DISSECT_CONFIG,
            [f"features={store}", f"dataset={self.dataset}", f"output={store}.dissect.zarr", *small],
        )
        summary = run_dissect(cfg)
        self.dissection = Path(summary["output"])
        sec.headline = (
            f"{summary['n_items']:,} x 384 random features -> {summary['dim']} dims, {summary['n_facets']} facets, "
            f"{summary['n_codes']} codes in {summary['seconds']:.1f} s (CPU: dissect/ has no device option)"
        )
        sec.lines = [
            f"- `{DISSECT_CONFIG.relative_to(REPO)}` on random 384-d features imported with `feature_store.importer`"
            + (" (dry run: 5,000 + 5,000 pairs, n_init 1)." if small else "."),
            "- dissect/ computes with numpy, scikit-learn and CPU torch; it has no GPU code path to measure. The torch "
            "code that runs on the GPU is the teacher, below.",
        ]

    def teacher(self, sec: Section) -> None:
        import torch

        from feature_store.teacher import Teacher

        self._needs("dissection")
        n = Teacher.from_store(self.dissection).features.shape[0] - 1
        seqs = torch.as_tensor(np.random.default_rng(2).integers(0, n + 1, size=(32 if self.dry else 256, 50)))
        ref_t = Teacher.from_store(self.dissection)
        dev_t = Teacher.from_store(self.dissection, device=self.device)
        times = {}
        for name, teacher in (("cpu", ref_t), (self.device, dev_t)):
            teacher.targets(seqs)  # warm-up
            self._sync()
            t = time.perf_counter()
            for _ in range(3):
                teacher.targets(seqs)
            self._sync()
            times[name] = (time.perf_counter() - t) / 3 * 1000
        cpu, dev = ref_t.targets(seqs), dev_t.targets(seqs)
        diff = float((dev.sim.cpu() - cpu.sim).abs().max())
        agree = float((dev.codes.cpu() == cpu.codes).float().mean())
        if diff > 1e-5 or agree <= 0.99:
            raise RuntimeError(
                f"teacher on {self.device} differs from CPU: max |sim diff| {diff:.2e}, codes agree {agree:.4f}"
            )
        label = "CUDA vs CPU" if self.device == "cuda" else "dry run: CPU vs CPU (the code path only)"
        sec.headline = (
            f"{label}: max abs sim difference {diff:.1e} (limit 1e-5), codes agree {agree:.4f} (limit > 0.99); "
            f"{times['cpu']:.1f} ms per {len(seqs)} x 50 batch on CPU"
            + (f", {times['cuda']:.2f} ms on CUDA" if "cuda" in times else "")
        )

    # ---- 7. training -------------------------------------------------------------------------------
    def train(self, loss: str, mixed_precision: str) -> Callable[[Section], None]:
        def section(sec: Section) -> None:
            from accelerate.state import AcceleratorState

            from kdsr.config import load_config
            from trainer.config import TrainConfig
            from trainer.train import run_train

            self._needs("dataset", "dissection")
            out = self.work / "train" / f"{loss}-{mixed_precision}"
            overrides = [
                f"dataset={self.dataset}",
                f"out_dir={out}",
                f"modalities.0.features={self.dissection}",
                f"optim.loss={loss}",
                f"mixed_precision={mixed_precision!r}",  # quoted: YAML reads a bare no as false
                f"device={self.device}",
                f"epochs={self.args.train_epochs}",
                "resume=false",
                "progress=false",
            ]
            if self.dry:
                overrides += [f"max_steps={self.args.train_steps}", "optim.batch_size=32", "eval.sample_users=64"]
            cfg = load_config(TrainConfig, TRAIN_CONFIG, overrides)
            AcceleratorState._reset_state(True)  # each run picks its own mixed precision
            self._reset_peak()
            try:
                run_train(cfg)
            finally:
                AcceleratorState._reset_state(True)  # and leaves none behind for whatever runs next
            m = json.loads((out / "metrics.json").read_text())
            steps = m["valid_history"][-1]["step"]
            train_s = sum(m["timing"]["epoch_seconds_this_session"])
            eval_s = sum(h["eval_seconds"] for h in m["valid_history"])
            peak = m["timing"].get("peak_cuda_mib")
            sec.headline = (
                f"{steps} steps in {train_s:.1f} s = {steps / train_s:.2f} steps/s; peak GPU "
                + (f"{peak / 1024:.2f} GiB" if peak is not None else "n/a (CPU)")
                + f"; validation {eval_s:.1f} s; valid NDCG@10 {m['best_valid_ndcg@10']:.4f}"
            )
            sec.lines = [
                f"- `{TRAIN_CONFIG.relative_to(REPO)}` with `optim.loss={loss} mixed_precision={mixed_precision} "
                f"epochs={self.args.train_epochs}`"
                + (f" `max_steps={self.args.train_steps}`" if self.dry else "")
                + f"; {m['counts']['train_windows']:,} training windows, batch {cfg.optim.batch_size}; peak RSS "
                f"{m['timing']['peak_rss_mib'] / 1024:.2f} GiB (process so far).",
            ]

        return section

    # ---- the whole check ---------------------------------------------------------------------------
    def run_all(self) -> None:
        self.run("setup", self.setup)
        for q in ("none", "int8", "nf4"):
            self.run(f"encode {'bf16' if q == 'none' else q}", self.encode(q))
        self.run("ray", self.ray)
        self.run("sharding", self.sharding)
        self.run("dissect", self.dissect)
        self.run("teacher", self.teacher)
        for loss, mp in (("ce", "no"), ("ce", "bf16"), ("sampled_softmax", "bf16")):
            self.run(f"train {loss} {'fp32' if mp == 'no' else mp}", self.train(loss, mp), "train")

    def report(self) -> str:
        """The markdown report: environment, a summary table, then each section's details."""
        import torch

        a = self.args
        took = time.perf_counter() - self.t0
        lines = [
            "# GPU check" + (" (DRY RUN on CPU: code paths only, not performance figures)" if self.dry else ""),
            "",
            f"- Date: {a.date or time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; "
            f"command: `python -m bench.gpu_check{' ' + ' '.join(a.argv) if a.argv else ''}`; "
            f"took {took:.0f} s of a {a.budget_s:.0f} s budget.",
            f"- GPU: {self.gpu_name}"
            + (f" x{torch.cuda.device_count()}, {self.gpu_gib:.0f} GiB" if not self.dry else "")
            + f"; dense bf16 peak: {f'{self.peak:g} TFLOP/s' if self.peak else 'n/a'}.",
            f"- Driver {driver_version()}, CUDA {torch.version.cuda or 'n/a'}; torch {torch.__version__}, "
            f"bitsandbytes {version('bitsandbytes')}, transformers {version('transformers')}, "
            f"accelerate {version('accelerate')}, ray {version('ray')}.",
            f"- Host: {cpu_name()}, {os.cpu_count()} CPU cores, {host_memory_gib():.0f} GiB; Python "
            f"{platform.python_version()}.",
            f"- Encode: {a.items:,} Beauty titles with `{ENCODE_CONFIG.relative_to(REPO)}`'s settings (last-token "
            "pooling, max_length 128, its template and batch size); FLOP fraction = 2 x params x tokens / s / peak.",
            "",
            "| section | status | seconds | result |",
            "|---|---|---|---|",
        ]
        for s in self.sections:
            lines.append(f"| {s.name} | {s.status} | {s.seconds:.1f} | {s.headline.replace('|', '/')} |")
        enc = [self.encoded[q].row for q in ("none", "int8", "nf4") if q in self.encoded]
        if enc:
            lines += [
                "",
                "## Encode",
                "",
                "| precision | items | tokens | load s | encode s | items/s | tokens/s | TFLOP/s | FLOP fraction "
                "| peak GPU | planner weights GiB | cosine to bf16 min / mean |",
                "|---|---|---|---|---|---|---|---|---|---|---|---|",
            ]
            for r in enc:
                lines.append(
                    f"| {r['precision']} | {r['items']:,} | {r['tokens']:,} | {r['load_s']:.1f} | {r['seconds']:.2f} "
                    f"| {r['items_per_s']:.1f} | {r['tokens_per_s']:,.0f} | {r['tflops']:.3g} | {r['flop']} "
                    f"| {r['peak']} | {r['planned']:.3g} | {r.get('cos', '-')} |"
                )
        for s in self.sections:
            lines += ["", f"## {s.name}", "", f"Status: {s.status} ({s.seconds:.1f} s). {s.headline}"]
            if s.lines:
                lines += ["", *s.lines]
        return "\n".join(lines) + "\n"


# ---- helpers ---------------------------------------------------------------------------------------
def build_llm(out: Path, arch: str, tiny: bool, device: str) -> tuple[Path, str]:
    """A random-init decoder LLM of the real 7B shape (or a 2-layer, hidden-64 one), saved like a download."""
    import torch
    import transformers

    from feature_store.models import resolve_model

    tok = transformers.AutoTokenizer.from_pretrained(resolve_model(TOKENIZER_MODEL, with_hash=False).source)
    cls_name, label, dims = ARCHS[arch]
    if tiny:
        dims, label = {**TINY, "vocab_size": tok.vocab_size}, f"{cls_name} 2 layers, hidden 64 (dry run)"
    cfg = getattr(transformers, cls_name)(**dims)
    dtype = torch.float32 if tiny else torch.bfloat16
    torch.manual_seed(0)
    try:
        with torch.device(device):  # 7B: initialised on the GPU in bf16 (seconds), not on the CPU (minutes)
            model = transformers.AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    except torch.OutOfMemoryError:
        log.warning("%s does not fit on the GPU for initialisation; initialising on the CPU (slower)", label)
        torch.cuda.empty_cache()
        model = transformers.AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    del model
    return out, label


def load_sharded(enc, device: str, max_memory: dict, offload_dir: Path):
    """load_model's arguments with device_map="auto" over `max_memory` (load_model itself places a one-GPU
    model on that GPU and never offloads, so offload needs the map passed here)."""
    import transformers

    from feature_store.models import load_kwargs, load_model, model_class, resolve_model

    resolved = resolve_model(enc.model, with_hash=False)
    if sum(k != "cpu" for k in max_memory) > 1:
        return load_model(enc, resolved, device=device, max_memory=max_memory)
    kw = load_kwargs(enc, device, None) | {
        "device_map": "auto",
        "max_memory": max_memory,
        "offload_folder": str(offload_dir),
    }
    hf_config = transformers.AutoConfig.from_pretrained(resolved.source)
    model = model_class(hf_config, enc.modality).from_pretrained(resolved.source, **kw).eval()
    return model, transformers.AutoTokenizer.from_pretrained(resolved.source)


def version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def driver_version() -> str:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
        )
        return out.stdout.splitlines()[0].strip() if out.returncode == 0 and out.stdout.strip() else "n/a"
    except (OSError, subprocess.TimeoutExpired):
        return "n/a"


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def host_memory_gib() -> float:
    import psutil

    return psutil.virtual_memory().total / GIB


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="python -m bench.gpu_check", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny model, ~50 items, a few steps (< 1 min)")
    ap.add_argument("--out", type=Path, help=f"report path (default {RESULTS.relative_to(REPO)}; dry run: a temp file)")
    ap.add_argument("--arch", choices=sorted(ARCHS), default="llama", help="7B shape: Llama-2-7B or Qwen2.5-7B")
    ap.add_argument("--items", type=int, help="titles to encode (default 2000; dry run 50)")
    ap.add_argument("--shard-items", type=int, default=256, help="titles encoded by the sharded model")
    ap.add_argument("--batch-size", type=int, help="encoder.batch_size (default: the config's)")
    ap.add_argument("--train-epochs", type=int, help="epochs per training run (default 3 = 264 steps; dry run 1)")
    ap.add_argument("--train-steps", type=int, default=3, help="dry run: optimizer steps per training run")
    ap.add_argument("--budget-s", type=float, help="time budget in seconds (default 450; dry run 240)")
    ap.add_argument("--gpu-memory-gib", type=float, help="plan for this much GPU memory instead of the device's")
    ap.add_argument("--date", help="date printed in the report (default: now)")
    ap.add_argument("--work", type=Path, help="working directory (default: a temp directory, removed at the end)")
    args = ap.parse_args(argv)
    args.argv = argv
    args.items = args.items or (50 if args.dry_run else 2000)
    args.train_epochs = args.train_epochs or (1 if args.dry_run else 3)
    args.budget_s = args.budget_s or (240.0 if args.dry_run else 450.0)
    if not args.out:
        args.out = Path(tempfile.mkdtemp(prefix="kdsr-gpu-check-")) / "gpu.md" if args.dry_run else RESULTS
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    import torch

    if not args.dry_run and not torch.cuda.is_available():
        print(
            "gpu_check: no CUDA device; run it on a GPU machine, or use --dry-run to check the code paths on CPU",
            file=sys.stderr,
        )
        return 2
    if args.dry_run and args.out.resolve() == RESULTS.resolve():
        print(f"gpu_check: a dry run never writes {RESULTS.relative_to(REPO)}; choose another --out", file=sys.stderr)
        return 2
    for key, value in (("HF_HUB_OFFLINE", "1"), ("TOKENIZERS_PARALLELISM", "false"), ("RAY_USAGE_STATS_ENABLED", "0")):
        os.environ.setdefault(key, value)
    from kdsr.logs import setup_logging

    setup_logging()
    with tempfile.TemporaryDirectory(prefix="kdsr-gpu-check-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        check = GpuCheck(args, work)
        check.run_all()
        text = check.report()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
