"""Wait for the inference service, send one raw demo record, print the call and the answer.

Used by scripts/demo.sh; needs only the standard library.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.request

EXAMPLE = {
    "claim_id": "DEMO-0001", "policyholder_id": "P00042", "claim_ts": "2026-01-15T02:30:00Z",
    "customer_age": 29, "policy_tenure_months": 4, "annual_premium": 780.0, "vehicle_age": None,
    "claim_amount": 14500.0, "incident_type": "theft", "incident_severity": "major", "region": "north",
    "channel": "online", "police_report": None, "witnesses": 0, "days_to_report": 21,
}


def wait_ready(url: str, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/health/ready", timeout=5) as resp:
                return json.load(resp)
        except urllib.error.HTTPError as exc:
            last = exc.read().decode(errors="replace")
        except OSError as exc:
            last = str(exc)
        time.sleep(0.5)
    raise SystemExit(f"the service at {url} did not become ready within {timeout:.0f}s: {last}")


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--url", default="http://127.0.0.1:8000")
    p.add_argument("--spec", default="specs/claims.yaml")
    p.add_argument("--timeout", type=float, default=120)
    args = p.parse_args()
    ready = wait_ready(args.url, args.timeout)
    print(f"ready: {ready['model_name']} version {ready['model_version']} ({ready['alias']})")
    body = json.dumps({"records": [EXAMPLE]})
    print(f"\ncurl -s -X POST {args.url}/predict -H 'Content-Type: application/json' -d '{body}'\n")
    req = urllib.request.Request(f"{args.url}/predict", data=body.encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        print(json.dumps(json.load(resp), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
