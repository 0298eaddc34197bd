"""What a user would write instead of EyeNet's Serve app: one uvicorn process scoring in-process.

    python -m bench.fastapi_baseline --model default.default.ensemble --mlflow-uri URI --port 8100

Routes: ``/v1/detect``, ``/v1/stream`` and ``/v1/stream/batch`` (each series of the batch scored
in turn with ``model.score_stream``, its state kept in a dict), with the request bodies of EyeNet's
routes and no auth; answers carry each point's score and alarm.
"""
from __future__ import annotations

import argparse

import numpy as np
import uvicorn
from fastapi import FastAPI

from eyenet.lifecycle import registry
from eyenet.serving.schemas import DetectRequest, StreamBatchRequest, StreamRequest, check_series


def build(model) -> FastAPI:
    app = FastAPI()
    states: dict[str, object] = {}

    def points(scores) -> list[dict]:
        return [{"score": None if not np.isfinite(s) else float(s), "alarm": bool(a)}
                for s, a in zip(scores.score, scores.alarm)]

    @app.post("/v1/detect")
    def detect(req: DetectRequest) -> dict:
        return {"results": [{"id": s.id, "points": points(model.score(s.values))} for s in check_series(req.series)]}

    @app.post("/v1/stream")
    def stream(req: StreamRequest) -> dict:
        scores, states[req.id] = model.score_stream(np.asarray(req.values, dtype=float), states.get(req.id))
        return {"id": req.id, "points": points(scores)}

    @app.post("/v1/stream/batch")
    def stream_batch(req: StreamBatchRequest) -> dict:
        out = []
        for s in req.series:
            scores, states[s.id] = model.score_stream(np.asarray(s.values, dtype=float), states.get(s.id))
            out.append({"id": s.id, "points": points(scores)})
        return {"results": out}

    return app


def main() -> None:
    import torch

    torch.set_num_threads(1)
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--mlflow-uri", required=True)
    ap.add_argument("--port", type=int, required=True)
    args = ap.parse_args()
    model = registry.Registry(args.mlflow_uri).load(args.model, alias="champion")
    uvicorn.run(build(model), host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
