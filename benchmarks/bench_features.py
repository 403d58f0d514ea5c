"""Each model feature's value and cost, side by side (JSON): permutation importance on the reference run's test
window, bytes kept per entity in the online store, and the median time of one online lookup of that feature alone.

The reference run is the pipeline's data and model steps at the pipeline's default parameters (what `make run`
trains: tests.helpers.evaluate_reference_run), with the embedded Feast configuration (SQLite online store). The
lookup of an on-demand feature fetches its inputs and computes it through Feast; the serving path computes all of
them at once (`on_demand_arrays`), timed per request beside them as the baseline of the same run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
from machine import describe  # benchmarks/machine.py, beside this script

from mlplatform.features import store as featurestore
from mlplatform.features.compute import ON_DEMAND_INPUTS, on_demand_arrays
from mlplatform.features.cost import feature_refs, lookup_seconds, on_demand_views, stored_bytes
from tests.helpers import evaluate_reference_run  # the checkout's tests/: run with PYTHONPATH=. (make bench-features)

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks/results/features.json")
    parser.add_argument("--lookups", type=int, default=200, help="timed lookups per feature")
    args = parser.parse_args()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-features-") as tmp:
        ran = evaluate_reference_run(Path(tmp))
        settings = ran["settings"]
        store = featurestore.open_store(settings.feast_repo, settings.feast_data, settings.feast_config_file)
        tx = pd.read_parquet(ran["raw"]).tail(args.lookups)
        now = datetime.now(UTC).timestamp()
        rows = [
            {"customer_id": int(c), "merchant_id": int(m), "amount": float(a), "event_unix_s": now}
            for c, m, a in zip(tx.customer_id, tx.merchant_id, tx.amount, strict=True)
        ]
        keys = [{"customer_id": r["customer_id"], "merchant_id": r["merchant_id"]} for r in rows]
        sizes = stored_bytes(store, keys)
        refs, computed = feature_refs(store), on_demand_views(store)
        lookups = {name: lookup_seconds(store, ref, rows, args.lookups) for name, ref in refs.items()}
        # the serving path's computation of every on-demand feature for one request, from fetched inputs
        view = {n: "merchant_stats" if n.startswith("merchant_") else "customer_stats" for n in ON_DEMAND_INPUTS}
        fetched = store.get_online_features(
            features=[f"{view[n]}:{n}" for n in ON_DEMAND_INPUTS], entity_rows=keys[:1]
        ).to_dict()
        one = {**{n: fetched[n] for n in ON_DEMAND_INPUTS}, "amount": [rows[0]["amount"]], "event_unix_s": [now]}
        compute_times = []
        for _ in range(args.lookups):
            t0 = time.perf_counter()
            on_demand_arrays(one)
            compute_times.append(time.perf_counter() - t0)
        importance = ran["report"]["importance"]
        features = [
            {
                "feature": name,
                "source": "on-demand" if refs[name].split(":")[0] in computed else refs[name].split(":")[0],
                "pr_auc_drop": round(v["pr_auc_drop"], 5),
                "pr_auc_drop_std": round(v["std"], 5),
                "earns_its_keep": v["measurable"],
                "online_bytes_per_entity": round(sizes[name], 2),
                "lookup_ms_p50": round(lookups[name] * 1e3, 3),
            }
            for name, v in importance.items()
        ]
    result = {
        "benchmark": "feature value and cost",
        "date": datetime.now(UTC).date().isoformat(),
        "machine": describe(),
        "reference_run": "pipeline defaults (mlplatform.params.PipelineParams), embedded Feast (SQLite online)",
        "test_pr_auc": round(ran["report"]["model"]["pr_auc"], 4),
        "serving_on_demand_compute_ms_p50": round(statistics.median(compute_times) * 1e3, 4),
        "features": features,
        "wall_seconds": round(time.monotonic() - started, 1),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
