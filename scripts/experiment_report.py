#!/usr/bin/env python3
"""Plots and tables from an experiment's results.json (scripts/experiment.py).

  scripts/experiment_report.py experiment-run/cpu/results.json [--markdown FILE]
      [--images_dir DIR] [--metric accuracy|macro_f1]

Per method (the original base included) and round: the mean over the unseen tasks of the
few-shot and of the full fine-tuning scores, and over the seen tasks, then the mean and
a 95% confidence interval (Student's t) across seeds. Writes three PNGs (score vs round,
one line per method, error bars = 95% CI across seeds; skipped, with a message, without
matplotlib) and a markdown section between the markers
<!-- experiment:NAME:begin --> / <!-- experiment:NAME:end --> of the markdown file (the
config's report.markdown, e.g. docs/experiments.md; appended when they are absent, so a
rerun replaces its own section only). Without a markdown file in the config, OUT/report.md.
Python 3.11 standard library (+ matplotlib for the plots).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BASE = "base"
GROUPS = [("few_shot", "unseen tasks, few-shot"), ("full", "unseen tasks, full fine-tuning"),
          ("seen", "seen tasks, fine-tuned from the base")]
# Two-sided 95% Student t quantiles by degrees of freedom (1..30; beyond: 1.96).
T95 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179,
       2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064,
       2.060, 2.056, 2.052, 2.048, 2.045, 2.042]
PLATEAU_TOL = 0.005


def ci95(values: list[float]) -> tuple[float, float, float]:
    """Mean, standard deviation and the 95% CI half-width (0 for one value)."""
    n = len(values)
    m = statistics.fmean(values)
    if n < 2:
        return m, 0.0, 0.0
    sd = statistics.stdev(values)
    t = T95[n - 2] if n - 2 < len(T95) else 1.96
    return m, sd, t * sd / math.sqrt(n)


class Table:
    """score[group][method][round][seed] = mean over that group's tasks."""

    def __init__(self, res: dict, metric: str):
        self.res = res
        self.metric = metric
        cfg = res["config"]
        self.rounds = cfg["rounds"]
        self.methods = [BASE] + [m["name"] for m in cfg["methods"]]
        self.tasks = {"few_shot": res["unseen"], "full": res["unseen"], "seen": res["seen"]}
        raw: dict = {}
        for e in res["evaluations"]:
            if metric not in e:
                continue
            raw.setdefault((e["kind"], e["method"], e["round"], e["seed"]), {})[e["task"]] = \
                e[metric]
        self.raw = raw
        self.score: dict = {g: {} for g, _ in GROUPS}
        for (kind, method, rnd, seed), by_task in raw.items():
            if set(self.tasks[kind]) - set(by_task):
                continue  # incomplete: not every task of the group was scored
            vals = [by_task[t] for t in self.tasks[kind]]
            self.score[kind].setdefault(method, {}).setdefault(rnd, {})[seed] = \
                statistics.fmean(vals)
        # Every method's round 0 is the original base.
        for kind in self.score:
            base0 = self.score[kind].get(BASE, {}).get(0)
            if base0:
                for m in self.methods[1:]:
                    self.score[kind].setdefault(m, {})[0] = dict(base0)

    def series(self, kind: str, method: str) -> list[tuple[int, float, float, float, int]]:
        out = []
        for rnd in sorted(self.score[kind].get(method, {})):
            vals = list(self.score[kind][method][rnd].values())
            m, sd, ci = ci95(vals)
            out.append((rnd, m, sd, ci, len(vals)))
        return out

    def gain(self, kind: str, method: str, rnd: int) -> tuple[float, float, int] | None:
        """Paired (same seed) gain over the original base: mean and 95% CI half-width."""
        at = self.score[kind].get(method, {}).get(rnd, {})
        base = self.score[kind].get(BASE, {}).get(0, {})
        diffs = [at[s] - base[s] for s in at if s in base]
        if not diffs:
            return None
        m, _, ci = ci95(diffs)
        return m, ci, len(diffs)


def fmt(x: float, pct: bool = True) -> str:
    return f"{100 * x:.1f}" if pct else f"{x:.4f}"


def group_table(t: Table, kind: str) -> list[str]:
    lines = ["| method | round 0 (original base) | final round | best round | gain over base "
             "at final, 95% CI | plateau round |", "|---|---|---|---|---|---|"]
    base = t.series(kind, BASE)
    if not base and not any(t.series(kind, m) for m in t.methods):
        return ["(no complete evaluations)"]
    for m in t.methods:
        s = t.series(kind, m)
        if not s:
            continue
        if m == BASE:
            r0 = s[0]
            lines.append(f"| original base (no fusion) | {fmt(r0[1])} ± {fmt(r0[3])} "
                         f"(n={r0[4]}) | – | – | – | – |")
            continue
        r0 = next((x for x in s if x[0] == 0), None)
        final = s[-1]
        best = max(s, key=lambda x: x[1])
        g = t.gain(kind, m, final[0])
        gain = f"{'+' if g[0] >= 0 else ''}{fmt(g[0])} ± {fmt(g[1])} (n={g[2]})" if g else "–"
        plateau = next(x[0] for x in s if x[1] >= best[1] - PLATEAU_TOL)
        lines.append(
            f"| {m} | {fmt(r0[1]) if r0 else '–'} | r{final[0]}: {fmt(final[1])} ± "
            f"{fmt(final[3])} | r{best[0]}: {fmt(best[1])} | {gain} | r{plateau} |")
    return lines


def task_table(t: Table, kind: str) -> list[str]:
    """Final-round score per task (mean over seeds), per method."""
    methods = [m for m in t.methods if t.score[kind].get(m)]
    if not methods:
        return []
    lines = ["| task | " + " | ".join(
        "original base" if m == BASE else f"{m} (r{max(t.score[kind][m])})" for m in methods)
        + " |", "|---" * (len(methods) + 1) + "|"]
    for task in t.tasks[kind]:
        cells = []
        for m in methods:
            rnd = 0 if m == BASE else max(t.score[kind][m])
            vals = [v[task] for (k, mm, r, _), v in t.raw.items()
                    if k == kind and mm == m and r == rnd and task in v]
            cells.append(fmt(statistics.fmean(vals)) if vals else "–")
        lines.append(f"| {task} | " + " | ".join(cells) + " |")
    return lines


def calibrate(res: dict, field: str = "wall_s") -> dict | None:
    """Least-squares fit of a client process's time = process_s + steps x step_s. field:
    wall_s (as it ran, on a machine as busy as it was), or cpu_s (CPU seconds: what each
    process would take with a core to itself, i.e. on an otherwise idle machine with no more
    processes than cores)."""
    pts = [(p["steps"], p[field]) for p in res.get("processes", [])
           if p.get("steps") is not None and p.get(field)]
    if len(pts) < 3 or len({s for s, _ in pts}) < 2:
        return None
    n = len(pts)
    mx = sum(s for s, _ in pts) / n
    my = sum(w for _, w in pts) / n
    sxx = sum((s - mx) ** 2 for s, _ in pts)
    sxy = sum((s - mx) * (w - my) for s, w in pts)
    step = sxy / sxx
    return {"step_s": round(step, 3), "process_s": round(my - step * mx, 2), "n": n}


def timing_lines(res: dict) -> list[str]:
    procs = res.get("processes", [])
    if not procs:
        return []
    by: dict = {}
    for p in procs:
        by.setdefault(p["what"], []).append(p)
    out = ["| process | count | steps | median wall s | median CPU s |", "|---|---|---|---|---|"]
    for what, ps in sorted(by.items()):
        steps = sorted({p.get("steps") for p in ps if p.get("steps") is not None})
        out.append(f"| {what} | {len(ps)} | {', '.join(map(str, steps))} | "
                   f"{statistics.median(p['wall_s'] for p in ps):.1f} | "
                   f"{statistics.median(p['cpu_s'] for p in ps):.1f} |")
    cal, cpu = calibrate(res), calibrate(res, "cpu_s")
    if cal and cpu:
        load = res.get("machine", {}).get("load_avg")
        out.append("")
        out.append(f"Fitted over {cal['n']} client processes ({res['config']['jobs']} at a "
                   f"time): wall ≈ {cal['process_s']} s + steps × {cal['step_s']} s; CPU time "
                   f"≈ {cpu['process_s']} s + steps × {cpu['step_s']} s"
                   + (f" (load average at the start: {load[0]:.1f})" if load else "") + ".")
    return out


def plots(t: Table, name: str, images: Path) -> list[tuple[str, Path]]:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("experiment_report: matplotlib is not installed: plots skipped "
              "(apt-get install python3-matplotlib)", file=sys.stderr)
        return []
    images.mkdir(parents=True, exist_ok=True)
    out = []
    others = [m for m in t.methods if m != BASE]
    for kind, title in GROUPS:
        if not any(t.series(kind, m) for m in t.methods):
            continue
        fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=110)
        base = t.series(kind, BASE)
        if base:
            _, m0, _, ci0, n0 = base[0]
            ax.axhline(m0, color="gray", ls="--", lw=1, label=f"original base (n={n0})")
            if ci0:
                ax.axhspan(m0 - ci0, m0 + ci0, color="gray", alpha=0.15, lw=0)
        for i, m in enumerate(others):
            s = t.series(kind, m)
            if not s:
                continue
            dx = (i - (len(others) - 1) / 2) * 0.06
            ax.errorbar([x[0] + dx for x in s], [x[1] for x in s], yerr=[x[3] for x in s],
                        marker="o", ms=4, capsize=3, lw=1.5, label=m)
        ax.set_xlabel("round (base version)")
        ax.set_ylabel(t.metric)
        ax.set_xticks(range(0, t.rounds + 1))
        nseeds = len(t.res["config"]["seeds"])
        ax.set_title(f"{name}: {title}\nmean over {len(t.tasks[kind])} tasks; "
                     f"bars: 95% CI over {nseeds} seed(s)", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = images / f"{name}-{kind}.png"
        fig.savefig(path)
        plt.close(fig)
        out.append((title, path))
    return out


def section(res: dict, t: Table, name: str, images: list[tuple[str, Path]], md_dir: Path) -> str:
    cfg = res["config"]
    tr, ev = cfg["train"], cfg["eval"]
    walls = res.get("wall_s") or []
    machine = res.get("machine", {})
    lines = [f"<!-- experiment:{name}:begin -->",
             f"### Results: `{name}` ({res.get('finished', res.get('updated', ''))[:10]})", ""]
    lines.append(f"Command: `{res.get('invoked_as') or res.get('command')}` "
                 f"(config `{res.get('config_file')}`; every number: `results.json`).")
    lines.append("")
    done = sum(1 for r in res.get("runs", {}).values() if r.get("status") == "done")
    total = len(cfg["seeds"]) * (len(cfg["methods"]) + 1)
    lines.append(
        f"Base `{Path(res['model']).name}` ({cfg['shared_prefix'] or 'every float tensor'} "
        f"shared); {len(res['seen'])} seen tasks ({', '.join(res['seen'])}), "
        f"{len(res['unseen'])} unseen ({', '.join(res['unseen'])}); {cfg['rounds']} "
        f"round{'s' if cfg['rounds'] != 1 else ''} of "
        f"{cfg['contributors_per_round']} contributors; {tr['steps']} steps of batch "
        f"{tr['batch_size']}, sequences of {tr['max_seq_length']} tokens, lr {tr['lr']}; "
        f"probes: {ev['few_shot_examples']}-shot ({ev['few_shot_steps']} steps), full "
        f"({ev['full_steps']} steps over ≤ {cfg['data']['max_train_rows'] or 'all'} rows), "
        f"seen ({ev['seen_steps']} steps, rounds 0, every {ev['seen_every']}, last); test sets "
        f"capped at {cfg['data']['max_test_rows'] or 'all'} rows; seeds "
        f"{', '.join(map(str, cfg['seeds']))}. Runs finished: {done} of {total}"
        + (f"; wall time {sum(walls) / 60:.1f} min" if walls else "")
        + (f" on {machine.get('cpus')} cores ({machine.get('cpu', 'CPU')})" if machine else "")
        + (f". Tasks not found, left out: {', '.join(res['skipped_tasks'])}"
           if res.get("skipped_tasks") else "") + ".")
    lines.append("")
    lines.append(f"Scores: {t.metric} × 100, mean over the group's tasks, then mean ± 95% CI "
                 f"(Student's t) over seeds; gain: paired by seed against the original base; "
                 f"plateau: the first round within {100 * PLATEAU_TOL:.1f} points of the "
                 f"method's best.")
    for kind, title in GROUPS:
        lines += ["", f"**{title}**", ""] + group_table(t, kind)
    for title, path in images:
        rel = os.path.relpath(path, md_dir)
        lines += ["", f"![{title}]({rel})"]
    for kind, title in GROUPS[:2]:
        tt = task_table(t, kind)
        if tt:
            lines += ["", f"Per task, last round ({title}; mean over seeds):", ""] + tt
    tl = timing_lines(res)
    if tl:
        lines += ["", "Time per client process:", ""] + tl
    lines.append(f"<!-- experiment:{name}:end -->")
    return "\n".join(lines) + "\n"


def write_section(md: Path, name: str, text: str) -> None:
    begin, end = f"<!-- experiment:{name}:begin -->", f"<!-- experiment:{name}:end -->"
    old = md.read_text() if md.exists() else ""
    if begin in old and end in old:
        new = old[:old.index(begin)] + text.rstrip("\n") + old[old.index(end) + len(end):]
    else:
        new = old.rstrip("\n") + ("\n\n" if old else "") + text
    md.parent.mkdir(parents=True, exist_ok=True)
    md.write_text(new)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("results", help="results.json of scripts/experiment.py")
    ap.add_argument("--markdown", help="markdown file to update (default: the config's "
                                       "report.markdown, else OUT/report.md)")
    ap.add_argument("--images_dir", help="folder for the PNGs (default: the config's "
                                         "report.images_dir, else OUT)")
    ap.add_argument("--metric", help="accuracy (default: the config's eval.metric) or macro_f1")
    args = ap.parse_args()
    path = Path(args.results)
    res = json.loads(path.read_text())
    cfg = res["config"]
    rep = cfg.get("report", {}) or {}
    md = Path(args.markdown) if args.markdown else (
        REPO / rep["markdown"] if rep.get("markdown") else path.parent / "report.md")
    images = Path(args.images_dir) if args.images_dir else (
        REPO / rep["images_dir"] if rep.get("images_dir") else path.parent)
    metric = args.metric or cfg["eval"].get("metric", "accuracy")
    name = cfg["name"]
    t = Table(res, metric)
    pics = plots(t, name, images)
    text = section(res, t, name, pics, md.parent)
    write_section(md, name, text)
    print(text)
    print(f"experiment_report: wrote {md}" + (f" and {len(pics)} plot(s) in {images}"
                                               if pics else ""), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
