#!/usr/bin/env python3
"""Medians of several bench.py runs (bench/results/*.json), per K, with the targets.

On a noisy machine one run says little: run bench.py several times (alternating with
nothing else) and summarise them here. Each figure is the median over the runs of that
run's own figure (a percentage is taken against the same run's ceiling), so a slow disk
in one run does not mix with a fast one in another.

    python3 bench/medians.py bench/results/2026-11-29-1gib-k2-16-run*.json
"""
import argparse
import json
import statistics
import sys


def med(values):
    values = [v for v in values if isinstance(v, (int, float))]
    return statistics.median(values) if values else None


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("runs", nargs="+", help="bench.py result files")
    args = ap.parse_args()
    runs = [json.load(open(p)) for p in args.runs]
    ks = sorted({row["k"] for r in runs for row in r["summary"]})

    def rows(k):
        return [row for r in runs for row in r["summary"] if row["k"] == k]

    lim = {
        key: med([r["limits"].get(key) for r in runs])
        for key in ("memcpy_gbps", "tcp_loopback_gbps", "disk_write_fsync_gbps", "disk_read_gbps",
                    "grpc_download_gbps", "grpc_upload_gbps", "sha256_gbps")
    }
    print(f"{len(runs)} runs: " + ", ".join(r["started"] for r in runs))
    print("limits (median): " + " | ".join(f"{k} {v:.2f}" for k, v in lim.items() if v))
    print()
    head = ("K", "upload MB/s", "up %", "fusion s", "fusion vs floor", "input %", "RSS MB",
            "download MB/s", "down %", "down % of floor", "vs numpy")
    print("  ".join(f"{h:>14}" for h in head))
    table = {}
    for k in ks:
        rs = rows(k)
        # The download floor of each run: gRPC alone and the client's SHA-256 check of
        # every byte, both on the receiving thread.
        floors = []
        for r in runs:
            g, s = r["limits"].get("grpc_download_gbps"), r["limits"].get("sha256_gbps")
            floors.append(1e3 / (1 / g + 1 / s) if g and s else None)
        down_floor_pct = med([row["download_mbps"] / f * 100
                              for row, f in zip(rs, floors) if f])
        fusion_vs_floor = med([row["fusion_floor_write_s"] / row["fusion_s"] * 100 for row in rs
                               if row.get("fusion_floor_write_s")])
        t = {
            "upload_mbps": med([row["upload_mbps"] for row in rs]),
            "upload_pct": med([row["upload_pct"] for row in rs]),
            "fusion_s": med([row["fusion_s"] for row in rs]),
            "fusion_vs_floor_pct": fusion_vs_floor,
            "fusion_pct": med([row["fusion_pct"] for row in rs]),
            "rss_mb": med([row["server_peak_rss_bytes"] / 1e6 for row in rs]),
            "download_mbps": med([row["download_mbps"] for row in rs]),
            "download_pct": med([row["download_pct"] for row in rs]),
            "download_floor_pct": down_floor_pct,
            "vs_numpy": med([row.get("speedup_vs_numpy") for row in rs]),
        }
        table[k] = t
        cells = [k, t["upload_mbps"], t["upload_pct"], t["fusion_s"], t["fusion_vs_floor_pct"],
                 t["fusion_pct"], t["rss_mb"], t["download_mbps"], t["download_pct"],
                 t["download_floor_pct"], t["vs_numpy"]]
        print("  ".join(f"{c:>14.1f}" if isinstance(c, float) else f"{str(c if c is not None else '-'):>14}"
                        for c in cells))
    print()
    print("fusion vs floor: the time to write and fsync the new base alone (same run) / fusion time")
    print("down % of floor: download / (gRPC alone + SHA-256 of every byte, on one thread), same run")
    worst = lambda key: min(t[key] for t in table.values() if t[key] is not None)
    rss = [t["rss_mb"] for t in table.values()]
    checks = [
        ("upload >= 60% of min(TCP, disk write)", worst("upload_pct") >= 60, f"worst {worst('upload_pct'):.0f}%"),
        ("download >= 60% of loopback TCP", worst("download_pct") >= 60, f"worst {worst('download_pct'):.0f}%"),
        ("download >= 60% of its floor", worst("download_floor_pct") >= 60, f"worst {worst('download_floor_pct'):.0f}%"),
        ("fusion >= 50% of min(memory, disk read)", worst("fusion_pct") >= 50, f"worst {worst('fusion_pct'):.0f}%"),
        ("fusion >= 3x numpy (where numpy fits)", worst("vs_numpy") >= 3, f"worst {worst('vs_numpy'):.1f}x"),
        ("server RSS <= 1.5 GB at the largest K", table[ks[-1]]["rss_mb"] <= 1500, f"{table[ks[-1]]['rss_mb']:.0f} MB"),
        ("server RSS flat in K (max/min <= 1.25)", max(rss) / min(rss) <= 1.25, f"{max(rss) / min(rss):.2f}"),
    ]
    print("\ntargets (medians):")
    for name, ok, value in checks:
        print(f"  [{'    met' if ok else 'NOT MET'}] {name}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
