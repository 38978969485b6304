#!/usr/bin/env python3
"""Writes openb pod-list variants the default policy was NOT tuned on, to check
that it generalises: CPU-heavy (every pod asks 2x the CPU) and
GPU-model-constrained (40% of GPU pods restricted to a few models, as real
`gpu_spec` values do). Deterministic (fixed seed).

usage: scripts/openb-variants.py [SOURCE_POD_LIST] [OUT_DIR]
"""
import csv
import random
import sys
from pathlib import Path

src = Path(sys.argv[1] if len(sys.argv) > 1 else "data/openb/openb_pod_list_default.csv")
out = Path(sys.argv[2] if len(sys.argv) > 2 else "target/openb-variants")
out.mkdir(parents=True, exist_ok=True)
rows = list(csv.DictReader(src.open()))
fields = ["name", "cpu_milli", "memory_mib", "num_gpu", "gpu_milli", "gpu_spec"]
specs = ["V100M16|V100M32", "T4", "G2", "P100|T4", "G3|V100M32", "G2|G3"]
stem = src.stem.replace("openb_pod_list_", "")


def write(name, transform):
    rng = random.Random(7)
    path = out / f"openb_pod_list_{stem}-{name}.csv"
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            r = dict(r)
            r.setdefault("gpu_spec", "")
            transform(r, rng)
            w.writerow(r)
    print(path)


def cpu_heavy(r, rng):
    r["cpu_milli"] = str(int(r["cpu_milli"]) * 2)


def model_constrained(r, rng):
    if int(r["num_gpu"]) > 0 and rng.random() < 0.4:
        r["gpu_spec"] = rng.choice(specs)


write("cpuheavy", cpu_heavy)
write("models", model_constrained)
