"""The end of a gpu-check run: reads results.jsonl, compares the images, checks the tolerance and
the issue's goals, writes results.json and prints the table (scripts/gpu-check prints it last).

    python -m gpu_check.summary --results OUT/results.jsonl --json OUT/results.json \
        --tol-mean-abs 3.0 --tol-psnr-db 30 --tol-provisional \
        --goal-sdxl-s 1.5 --goal-sd15-s 0.8 --goal-batch4-ratio 1.6 [--dry-run]

The thresholds have no defaults here: scripts/gpu-check holds them, in one place. Every section
is computed on its own, so a phase that failed or never ran leaves '-' in its cells and the rest
of the table still prints.
"""

import argparse
import json
import traceback

from .results import load

MODELS = [("sdxl", "SDXL"), ("sd15", "SD1.5")]


def num(x, digits=3):
    return "-" if x is None else f"{x:.{digits}f}"


def ratio(a, b, digits=2):
    return None if a is None or b is None or b == 0 else round(a / b, digits)


def pipeline_entry(bench, batch):
    for p in (bench or {}).get("pipeline") or []:
        if p.get("batch") == batch:
            return p
    return None


def field(bench, batch, key):
    p = pipeline_entry(bench, batch)
    return None if p is None else p.get(key)


def first_image(bench):
    images = (bench or {}).get("images") or []
    return images[0] if images else None


def image_checks(ours, diffusers, f32, tol):
    """The three comparisons and the sanity of each image."""
    from . import image_diff

    out = {"pairs": {}, "sanity": {}}
    imgs = {"ours": first_image(ours), "diffusers": first_image(diffusers), "ours_f32": first_image(f32)}
    for name, path in imgs.items():
        if path:
            try:
                out["sanity"][name] = dict(image_diff.sanity(path), path=path)
            except Exception as e:  # noqa: BLE001 - a missing or unreadable image is a finding
                out["sanity"][name] = {"error": str(e), "path": path}
    if (diffusers or {}).get("nan"):
        out["sanity"].setdefault("diffusers", {})["nan"] = True
    for key, (a, b) in {"ours_vs_diffusers": ("ours", "diffusers"), "ours_vs_ours_f32": ("ours", "ours_f32"),
                        "diffusers_vs_ours_f32": ("diffusers", "ours_f32")}.items():
        if imgs[a] and imgs[b]:
            try:
                out["pairs"][key] = image_diff.compare(imgs[a], imgs[b])
            except Exception as e:  # noqa: BLE001
                out["pairs"][key] = {"error": str(e)}
    main = out["pairs"].get("ours_vs_diffusers")
    degenerate = [n for n, s in out["sanity"].items() if s.get("constant") or s.get("nan") or s.get("error")]
    if main is None or "error" in main:
        out["pass"], out["why"] = False, "no ours-vs-diffusers comparison"
    elif degenerate:
        out["pass"], out["why"] = False, f"degenerate image(s): {', '.join(degenerate)}"
    else:
        ok = main["mean_abs"] <= tol["mean_abs"] and main["psnr_db"] >= tol["psnr_db"]
        out["pass"], out["why"] = ok, "" if ok else "outside the tolerance"
    return out


def peak(*recs):
    """The largest peak of these phases' memory records, and how it was measured."""
    mems = [(r.get("memory") or {}) for r in recs]
    peaks = [m["peak_mib"] for m in mems if m.get("peak_mib") is not None]
    methods = sorted({m.get("peak_method") for m in mems if m.get("peak_method")})
    return (max(peaks) if peaks else None), ",".join(methods) or None


def model_section(phases, key, a):
    rec = {n: phases.get(f"{n}_{key}") or {} for n in ("ours", "diffusers", "ours_f32", "make")}
    batched = phases.get(f"ours_{key}_batched") or {}
    ours, diffusers, f32 = (rec[n].get("result") for n in ("ours", "diffusers", "ours_f32"))
    if ours and batched.get("result"):  # ours' batch-1 run and its batched run, as one result
        ours = dict(ours, pipeline=(ours.get("pipeline") or []) + (batched["result"].get("pipeline") or []))
    mem_ours, how_ours = peak(rec["ours"], batched)
    mem_diff, how_diff = peak(rec["diffusers"])
    sec = {"ours": ours, "diffusers": diffusers, "ours_f32": f32,
           "memory": {"ours": mem_ours, "diffusers": mem_diff},
           "memory_method": {"ours": how_ours, "diffusers": how_diff},
           "make": rec["make"].get("result")}
    tol = {"mean_abs": a.tol_mean_abs, "psnr_db": a.tol_psnr_db}
    try:
        sec["images"] = image_checks(ours, diffusers, f32, tol)
    except Exception as e:  # noqa: BLE001 - numpy/PIL missing: say so, keep the timings
        sec["images"] = {"pass": False, "why": f"image comparison failed: {e}", "pairs": {}, "sanity": {}}
    goal_s = a.goal_sdxl_s if key == "sdxl" else a.goal_sd15_s
    b1_ours, b1_diff = field(ours, 1, "median_s"), field(diffusers, 1, "median_s")
    ips1, ips4 = field(ours, 1, "images_per_s"), field(ours, 4, "images_per_s")
    b4 = ratio(ips4, ips1)
    vs = ratio(b1_ours, b1_diff)
    # goal -> (met, the measured value)
    sec["goals"] = {
        f"b1 <= {goal_s} s": (None if b1_ours is None else b1_ours <= goal_s, num(b1_ours) + " s"),
        "no slower than diffusers": (None if vs is None else vs <= 1.0, num(vs, 2) + "x"),
        f"b4 >= {a.goal_batch4_ratio}x b1 img/s": (None if b4 is None else b4 >= a.goal_batch4_ratio,
                                                   num(b4, 2) + "x"),
    }
    return sec


def verdict(flag):
    return {True: "PASS", False: "FAIL", None: "n/a"}[flag]


def model_table(name, sec, a):
    ours, diff = sec["ours"] or {}, sec["diffusers"] or {}
    cfg = ours or diff
    lines = []
    title = f"{name}"
    if cfg:
        title += (f" {cfg.get('width')}x{cfg.get('height')}, {cfg.get('steps')} steps, guidance {cfg.get('guidance')},"
                  f" {cfg.get('scheduler')}, {cfg.get('dtype')} (VAE ours {ours.get('vae_dtype', '-')},"
                  f" diffusers {diff.get('vae_dtype', '-')})")
    lines.append(title)
    lines.append(f"  {'':30}{'ours':>10}{'diffusers':>11}{'ours/diff':>11}")

    def row(label, x, y, digits=3, scale=1.0):
        xs = None if x is None else x * scale
        ys = None if y is None else y * scale
        lines.append(f"  {label:30}{num(xs, digits):>10}{num(ys, digits):>11}{num(ratio(xs, ys), 2):>11}")

    row("pipeline median b1 (s)", field(ours, 1, "median_s"), field(diff, 1, "median_s"))
    row("denoise median b1 (s)", field(ours, 1, "denoise_median_s"), field(diff, 1, "denoise_median_s"))
    row("UNet step b2 median (ms)", (ours.get("unet_step") or {}).get("median_s"),
        (diff.get("unet_step") or {}).get("median_s"), 1, 1000.0)
    row("load (s)", ours.get("load_s"), diff.get("load_s"), 2)
    row("peak GPU MiB (nvidia-smi)", sec["memory"]["ours"], sec["memory"]["diffusers"], 0)
    row("torch max allocated MiB", None, diff.get("torch_max_allocated_mib"), 0)
    for b in (1, 2, 4):
        row(f"images/s b{b}", field(ours, b, "images_per_s"), field(diff, b, "images_per_s"), 3)
    row("images/s b4 / b1", ratio(field(ours, 4, "images_per_s"), field(ours, 1, "images_per_s")),
        ratio(field(diff, 4, "images_per_s"), field(diff, 1, "images_per_s")), 2)
    img = sec["images"]
    labels = {"ours_vs_diffusers": f"ours vs diffusers ({cfg.get('dtype', '?')})",
              "ours_vs_ours_f32": f"ours {cfg.get('dtype', '?')} vs ours f32",
              "diffusers_vs_ours_f32": f"diffusers {cfg.get('dtype', '?')} vs ours f32"}
    for k, label in labels.items():
        p = img["pairs"].get(k)
        if p is None:
            text = "-"
        elif "error" in p:
            text = p["error"]
        else:
            text = f"mean {p['mean_abs']:.3f}  max {p['max_abs']:3d}  PSNR {p['psnr_db']:.2f} dB"
        lines.append(f"  {'image ' + label:36}{text}")
    prov = " provisional" if a.tol_provisional else ""
    lines.append(f"  image check: {verdict(img.get('pass'))}  (tolerance{prov}: mean abs <= {a.tol_mean_abs},"
                 f" PSNR >= {a.tol_psnr_db} dB, no NaN/constant image){'  ' + img['why'] if img.get('why') else ''}")
    goals = "   ".join(f"{g}: {verdict(v)} ({m})" for g, (v, m) in sec["goals"].items())
    lines.append(f"  goals: {goals}")
    return lines


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--results", required=True)
    ap.add_argument("--json", required=True)
    ap.add_argument("--tol-mean-abs", type=float, required=True)
    ap.add_argument("--tol-psnr-db", type=float, required=True)
    ap.add_argument("--tol-provisional", action="store_true")
    ap.add_argument("--goal-sdxl-s", type=float, required=True)
    ap.add_argument("--goal-sd15-s", type=float, required=True)
    ap.add_argument("--goal-batch4-ratio", type=float, required=True)
    ap.add_argument("--dry-run", action="store_true")
    a = ap.parse_args()

    phases = load(a.results)
    out = {"dry_run": a.dry_run,
           "tolerance": {"mean_abs": a.tol_mean_abs, "psnr_db": a.tol_psnr_db, "provisional": a.tol_provisional},
           "goals": {"sdxl_s": a.goal_sdxl_s, "sd15_s": a.goal_sd15_s, "batch4_ratio": a.goal_batch4_ratio},
           "gpu": (phases.get("gpu") or {}).get("result"), "setup": (phases.get("setup") or {}).get("result"),
           "parity": (phases.get("parity") or {}).get("result"), "models": {},
           "phases": [{k: v for k, v in r.items() if k not in ("result", "memory")} for r in phases.values()]}
    lines = []
    gpu = out["gpu"] or {}
    head = "gpu-check" + (" DRY RUN (CPU, tiny models: timings and goals mean nothing)" if a.dry_run else "")
    lines.append(f"{head}  device: {gpu.get('name', '?')}, driver {gpu.get('driver', '?')},"
                 f" {gpu.get('memory_mib', '?')} MiB")
    lines.append("phases: " + ", ".join(f"{r['phase']} {r['status']} {num(r.get('seconds'), 0)}s"
                                        for r in phases.values()))

    par = out["parity"]
    parity_ok = None
    if par:
        parity_ok = bool(par.get("passed"))
        cases = par.get("cases") or []
        worst = max(cases, key=lambda c: c.get("max_abs_diff") or 0, default=None)
        where = f" ({worst.get('set')}/{worst.get('id')})" if worst else ""
        fails = par.get("failures") or []
        lines.append(f"parity (committed tiny fixtures, ours {par.get('device')} {par.get('dtype')} vs diffusers"
                     f" references, tolerance {par.get('tolerance')}/255): {verdict(parity_ok)}, {len(cases)} images,"
                     f" worst max abs diff {par.get('worst')}{where}" + (f", {len(fails)} over" if fails else ""))
    else:
        rec = phases.get("parity")
        lines.append(f"parity: {verdict(None)} ({rec['status'] if rec else 'not run'})")

    image_flags = []
    for key, name in MODELS:
        if not any(p.endswith("_" + key) or p.endswith(f"_{key}_batched") for p in phases):
            lines += ["", f"{name}: not run"]
            image_flags.append(None)
            continue
        try:
            sec = model_section(phases, key, a)
            out["models"][key] = sec
            lines.append("")
            lines.extend(model_table(name, sec, a))
            image_flags.append(sec["images"].get("pass"))
        except Exception:  # noqa: BLE001 - a broken section must not hide the others
            lines.append(f"{name}: summary failed:\n{traceback.format_exc()}")
            image_flags.append(False)

    # What ran must have passed; a part left out with --only is not held against the run.
    ran = ([parity_ok is True] if "parity" in phases else []) + [f is True for f in image_flags if f is not None]
    correct = bool(ran) and all(ran)
    goals = [v for sec in out["models"].values() for v, _ in sec["goals"].values()]
    out["verdict"] = {"correctness": correct, "goals_met": sum(1 for g in goals if g is True),
                      "goals_total": len(goals)}
    lines.append("")
    lines.append(f"RESULT: correctness {verdict(correct)} (parity {verdict(parity_ok)}, images "
                 + ", ".join(f"{n} {verdict(f)}" for (_, n), f in zip(MODELS, image_flags))
                 + f");  goals met {out['verdict']['goals_met']}/{len(goals)}"
                 + ("  [dry run]" if a.dry_run else ""))
    with open(a.json, "w") as f:
        json.dump(out, f, indent=1)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
