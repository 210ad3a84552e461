"""A trained run as an online endpoint on Ray Serve: POST /recommend, GET /health.

    kdsr serve runs/train/beauty-sasrec-kd [port=8000 replicas=2 max_batch_size=64]
    serve run jobs.serve:app run=runs/train/beauty-sasrec-kd          # the same app under Ray's own CLI
    curl -s 127.0.0.1:8000/recommend -d '{"history": ["B00004TMFE"], "k": 5}'
    -> {"items": [...], "scores": [...], "unknown": 0, "popular": false}

Requests are validated before they reach the model (`parse_request`): a malformed body, a bad `k`, a history
that is too long, an unknown item under unknown_items=error or an empty history under empty_history=error gets
a 400 / 422 whose message names the field, never a 500. Valid requests are scored together by `@serve.batch`
through the same `Recommender.top_k` as the batch job, so both give the same answers.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass

import numpy as np
from ray import serve

from trainer.recommend import Recommendation, Recommender, RecommendError
from trainer.use_config import ServeConfig

log = logging.getLogger(__name__)


@dataclass
class Parsed:
    """A validated request: internal-id history (non-empty), k, and how many unknown items were dropped."""

    ids: np.ndarray
    k: int
    unknown: int


def parse_request(rec: Recommender, cfg: ServeConfig, body: bytes) -> Parsed | Recommendation:
    """The request body -> a Parsed request, or the popularity answer for an empty history; RecommendError
    (with `field`) for anything the endpoint refuses."""
    try:
        payload = json.loads(body or b"")
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RecommendError(f"body: not valid JSON ({e})", "body") from None
    if not isinstance(payload, dict):
        raise RecommendError('body: expected a JSON object such as {"history": ["id", ...], "k": 10}', "body")
    extra = sorted(set(payload) - {"history", "k"})
    if extra:
        raise RecommendError(f"{extra[0]}: unknown field (known: history, k)", extra[0])
    history, k = payload.get("history"), payload.get("k", cfg.default_k)
    if isinstance(k, bool) or not isinstance(k, int):
        raise RecommendError(f"k: must be an integer, got {json.dumps(k)}", "k")
    limit = min(cfg.max_k or rec.n_items, rec.n_items)
    if not 1 <= k <= limit:
        raise RecommendError(f"k: must be between 1 and {limit:,}, got {k}", "k")
    if not isinstance(history, list):
        raise RecommendError("history: required, a list of item IDs (oldest first)", "history")
    if len(history) > cfg.max_history:
        raise RecommendError(f"history: {len(history):,} items, at most {cfg.max_history:,} accepted", "history")
    for pos, item in enumerate(history):
        if isinstance(item, bool) or not isinstance(item, str | int):
            raise RecommendError(f"history[{pos}]: must be a string or integer item ID, got {json.dumps(item)}")
    ids, unknown = rec.encode(history, cfg.unknown_items)
    if len(ids):
        return Parsed(ids, k, unknown)
    if cfg.empty_history == "error":
        why = f" (all {unknown} items unknown)" if unknown else ""
        raise RecommendError(f"history: empty{why}; the endpoint needs at least one known item")
    return Recommendation(list(rec.item_ids[rec.popular(k)]), [math.nan] * k, unknown, True)


def as_json(r: Recommendation) -> dict:
    """JSON has no NaN: the popularity fallback's scores are null."""
    scores = [None if math.isnan(s) else s for s in r.scores]
    return {"items": r.items, "scores": scores, "unknown": r.unknown, "popular": r.popular}


@serve.deployment
class RecommendEndpoint:
    """One replica: the run loaded once, requests validated one by one and scored in batches."""

    def __init__(self, cfg: dict):
        import torch

        self.cfg = ServeConfig.model_validate(cfg)
        torch.set_num_threads(max(1, math.ceil(self.cfg.replica_cpus)))
        self.rec = Recommender.load(self.cfg.run, self.cfg.device, self.cfg.check_inputs)
        self.rec.candidates()  # built before the first request
        self.score.set_max_batch_size(self.cfg.max_batch_size)
        self.score.set_batch_wait_timeout_s(self.cfg.batch_wait_timeout_s)
        self.started = time.time()

    @serve.batch
    async def score(self, requests: list[Parsed]) -> list[dict]:
        k = max(r.k for r in requests)  # ties go to the lower id, so every top-k is a prefix of the top-max(k)
        ids, scores = self.rec.top_k([r.ids for r in requests], k, self.cfg.exclude_history)
        out = []
        for r, i, s in zip(requests, ids, scores):
            found = i[: r.k] > 0
            items = list(self.rec.item_ids[i[: r.k][found]])
            out.append(as_json(Recommendation(items, s[: r.k][found].tolist(), r.unknown)))
        return out

    async def __call__(self, request):
        from starlette.responses import JSONResponse

        route = request.url.path.rstrip("/").rsplit("/", 1)[-1]
        if route == "health":
            return JSONResponse({"status": "ok", "run": self.cfg.run, "items": self.rec.n_items})
        if route != "recommend":
            return JSONResponse({"error": f"path: no route {request.url.path}; use POST /recommend"}, 404)
        if request.method != "POST":
            return JSONResponse({"error": "method: use POST with a JSON body", "field": "method"}, 405)
        try:
            parsed = parse_request(self.rec, self.cfg, await request.body())
        except RecommendError as e:
            return JSONResponse({"error": str(e), "field": e.field}, 400 if e.field == "body" else 422)
        if isinstance(parsed, Recommendation):
            return JSONResponse(as_json(parsed))
        return JSONResponse(await self.score(parsed))


def build_app(cfg: ServeConfig):
    """The Serve application of `cfg` (replicas and CPUs from the config)."""
    options = {
        "num_replicas": cfg.replicas,
        "ray_actor_options": {"num_cpus": cfg.replica_cpus},
        "max_ongoing_requests": 2 * cfg.max_batch_size,  # room for a full batch while the previous one runs
    }
    return RecommendEndpoint.options(**options).bind(cfg.model_dump(mode="json"))


def run_serve(cfg: ServeConfig) -> dict:
    """The serve stage: start (or join) Ray, serve the run at http://host:port/route_prefix; with `blocking`,
    until interrupted."""
    import ray

    from feature_store.encode import init_ray

    started = init_ray(cfg.ray)
    serve.start(http_options={"host": cfg.host, "port": cfg.port})
    serve.run(build_app(cfg), name="kdsr", route_prefix=cfg.route_prefix)
    url = f"http://{cfg.host}:{cfg.port}{cfg.route_prefix.rstrip('/')}"
    log.info("serving %s at %s/recommend (%d replicas)", cfg.run, url, cfg.replicas)
    summary = {"output": url, "run": cfg.run, "replicas": cfg.replicas}
    if not cfg.blocking:
        return summary
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        log.info("stopping")
    serve.shutdown()
    if started:
        ray.shutdown()
    return summary
