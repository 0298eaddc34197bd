"""``eyenet up``, ``eyenet status`` and ``eyenet down``: the running system from the command line."""
from __future__ import annotations

import argparse
import json
from typing import Any

from eyenet.cli.output import info


def add_parsers(sub: Any) -> None:
    up = sub.add_parser(
        "up",
        help="start local Ray, the embedded MLflow store, default models and the Serve app, then return",
        description=(
            "Start a local Ray cluster in the background, open the embedded MLflow store (.eyenet/), train and "
            "register the default models if there is no champion yet, deploy the EyeNet app on port 8000 "
            "(EYENET_PORT) and print its URL, an example request and the scores it returns per detector. "
            "Everything keeps running after the command returns; 'eyenet down' stops it."
        ),
    )
    up.add_argument("--port", type=int, default=None, help="HTTP port (default: EYENET_PORT, else 8000)")
    up.add_argument("--families", default=None, metavar="NAMES", help="family deployments to run (default: all)")
    up.add_argument("--config", default=None, metavar="FILE",
                    help="app settings (YAML or JSON: any field of the app config, e.g. quota, store, router; "
                    "see serve/serve_config.yaml's args) over the defaults")
    up.set_defaults(func=cmd_up)
    st = sub.add_parser("status", help="show deployments, replicas and served model versions")
    st.add_argument("--json", action="store_true")
    st.set_defaults(func=cmd_status)
    down = sub.add_parser("down", help="stop everything 'eyenet up' started")
    down.set_defaults(func=cmd_down)


def _example(url: str) -> tuple[str, dict[str, Any]]:
    from eyenet.core import presets, synthetic

    _, values, _ = synthetic.series("cpu_pct", n=presets.UP_ROWS, seed=presets.UP_SEED + 1)
    window = [round(float(v), 3) for v in values[:300]]
    window[-1] = round(window[-1] + 40.0, 3)  # a spike on the last point
    return f"{url}/v1/detect", {"series": [{"id": "host-1/cpu_pct", "values": window}]}


def cmd_up(args: argparse.Namespace) -> int:
    import requests

    from eyenet.cli import stack

    families = [f.strip() for f in args.families.split(",")] if args.families else None
    s = stack.up(port=args.port, families=families, settings=stack.read_settings(args.config), say=info)
    endpoint, body = _example(s.url)
    key = stack.admin_key_path().read_text().strip()
    resp = requests.post(endpoint, json=body, timeout=120, headers={"Authorization": f"Bearer {key}"})
    print(f"EyeNet is up at {s.url}  (OpenAPI: {s.url}/docs, metrics: {s.url}/metrics)")
    print("example request (a CPU series whose last point spikes):")
    print(f"  curl -s -X POST {endpoint} -H \"Authorization: Bearer $(cat {stack.admin_key_path()})\" "
          f"-H 'content-type: application/json' -d '{{\"series\": [{{\"id\": "
          f"\"host-1/cpu_pct\", \"values\": [{body['series'][0]['values'][0]}, ...]}}]}}'")
    if resp.status_code != 200:
        print(f"  the example request failed: {resp.status_code} {resp.text[:300]}")
        return 1
    res = resp.json()["results"][0]
    last = res["points"][-1]
    print(f"scores of the spiked point ({res['model']} version {res['version']}):")
    shares = last.get("shares") or {}
    for fam, v in sorted(last["detectors"].items()):
        share = f"  ({100 * shares[fam]:.0f} % of the score)" if shares.get(fam) is not None else ""
        print(f"  {fam:<12} {v:.3f}{share}" if v is not None else f"  {fam:<12} not ready")
    score = last["score"]
    if score is not None:
        print(f"  {'ensemble':<12} {score:.3f}  alarm: {'YES, ' + last['severity'] if last['alarm'] else 'no'}")
        if last.get("band"):
            lo, hi = last["band"]
            print(f"  expected     {last['expected']:.2f} (normal from {lo:.2f} to {hi:.2f})")
    else:
        print(f"  ensemble     not ready: {res.get('points_needed', '?')} more points needed")
    if s.dashboard:
        print(f"Ray dashboard and job API: {s.dashboard}  (e.g. ray job submit --address {s.dashboard} ...)")
    print("stop everything with: eyenet down")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from eyenet.cli import stack

    st = stack.status()
    if args.json:
        print(json.dumps(st, indent=2))
        return 0
    print(f"EyeNet at {st['url']} (Ray {st['ray']}): app {st['app']}")
    for name, d in sorted(st["deployments"].items()):
        replicas = ", ".join(f"{n} {k.lower()}" for k, n in d["replicas"].items()) or "no replicas"
        print(f"  {name:<20} {d['status']:<10} {replicas}")
    for name, v in st["champions"].items():
        print(f"  champion {name}: version {v}")
    ctl = st["controller"]
    if "error" in ctl:
        print(f"  model controller: {ctl['error']}")
        return 0
    health = ctl["health"]
    if health.get("ok"):
        print(f"  model controller: ok, {len(ctl['replicas'])} router replicas following")
    else:
        print(f"  model controller: registry unreachable ({health.get('failures')} failures, retrying in "
              f"{health.get('retry_in_s')}s): {health.get('error')}")
    for name, e in ctl["table"].items():
        print(f"  serving {name}: version {e['version']}" + (f" (switching to {e['next']})" if "next" in e else ""))
    for name, r in ctl["refused"].items():
        print(f"  refused {name} version {r['version']}: {r['reason']}")
    for name in ctl.get("retraining", []):
        print(f"  retraining {name}")
    for r in ctl.get("retrains", [])[-3:]:
        print(f"  retrained {r['name']}: {r.get('outcome', 'running')} ({r['reason']})")
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    from eyenet.cli import stack

    print("stopped" if stack.down(say=info) else "nothing was running")
    return 0

