"""Extraction and tables of the calibration study (calibration_study.py; issue 19).

``extract`` turns the runs into the small committed files every table is computed from:
per trajectory, ``oracle.npz`` (per round: the max_lr grid, every candidate's per-example
validation correctness [grid, seed, example], sparsity) and ``profile.csv`` (per round:
sparsity, ALLR's norm drop, and each pooled spread statistic under each view and window,
with the pruning-only null ratio of the all-weights view and the recorded layers' density).
``analyse`` computes from those files alone: the Oracle's paired-bootstrap optimum per
round, the slope of log(optimum) on sparsity with a CI over trajectories and its verdict
against "flat" and against SILO's rise, the power line, each predictor's regret against the
Oracle, and gradscope's evidence table (gradscope/calibrate/evidence.csv).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from gradscope.calibrate.gate import density_part
from gradscope.store import open_run
from gradscope.train.checkpoint import load_torch

# (column, view, window): pooled std of the recorded ReLU-fed layers
SPREADS = (("survivors_all", "survivors", "all"), ("survivors_last", "survivors", "last"),
           ("allw_all", "all", "all"), ("allw_last", "all", "last"))


def extract_profile(profile: Path) -> pd.DataFrame:
    """Per round: sparsity, norm drop, recorded layers' density, pooled std per view/window and the
    all-weights view's pruning-only null ratio per window."""
    rows = json.loads((profile / "rounds.json").read_text())
    out = pd.DataFrame({"round": [r["round"] for r in rows], "sparsity": [r["sparsity"] for r in rows],
                        "norm_drop": [r.get("norm_drop") for r in rows], "max_lr": [r.get("max_lr") for r in rows]})
    with open_run(profile / "run.h5") as r:
        lay = r.layer_rounds()
        pooled = r.pooled_layers() if hasattr(r, "pooled_layers") else sorted(set(lay["layer"]))
        lp = lay[lay["layer"].isin(pooled)].groupby("round")[["numel", "kept"]].sum()
        out["recorded_density"] = out["round"].map(lp["kept"] / lp["numel"])
        for col, view, window in SPREADS:
            s = r.round_summary(relu_only=True, view=view, window=window).set_index("round")["std"]
            out[col] = out["round"].map(s)
        for window in ("all", "last"):
            null = density_part(r, view="all", window=window, statistic="std", gamma=1.0,
                                rounds=out["round"].to_numpy(int)).set_index("round")["null_ratio"]
            out[f"allw_null_ratio_{window}"] = out["round"].map(null)
    return out


def extract_norms(profile: Path) -> pd.DataFrame:
    """Per round and pruned layer: density and the share of the rewound (initial) weights' squared
    norm the mask keeps, r = ||m * w_init||^2 / ||w_init||^2 (magnitude pruning keeps the large
    weights, so r > density; a BatchNorm-followed layer's gradient scales as 1/||w||, i.e. 1/sqrt(r))."""
    ck = load_torch(profile / "checkpoint.pt", what="checkpoint", required=("state",))
    init = ck["state"]["init"]
    rows = []
    for f in sorted(profile.glob("round_*.pt"), key=lambda p: int(p.stem.split("_")[1])):
        d = load_torch(f, what="round file", required=("masks",))
        k = int(f.stem.split("_")[1])
        for layer, m in d["masks"].items():
            w = init.get(f"{layer}.weight", init.get(f"{layer}.weight_orig"))
            if w is None:
                continue
            w2 = w.double() ** 2
            m = m.to(w2.dtype)
            rows.append({"round": k, "layer": layer, "density": float(m.mean()),
                         "kept_sqnorm": float((m * w2).sum() / w2.sum())})
    return pd.DataFrame(rows)


def extract_oracle(oracle: Path) -> dict:
    """{f"round{k}_grid", f"round{k}_correct" (uint8 [grid, seed, example]), f"round{k}_sparsity"}."""
    arrays = {}
    for d in sorted((oracle / "oracle").glob("round_*"), key=lambda p: int(p.name.split("_")[1])):
        k = int(d.name.split("_")[1])
        meta = json.loads((d / "candidates.json").read_text())
        grid = sorted({float(c["max_lr"]) for c in meta["candidates"]})
        seeds = sorted({int(c.get("seed", 0)) for c in meta["candidates"]})
        rows = []
        for g in grid:
            row = []
            for s in seeds:
                name = f"lr_{g:g}.pt" if s == 0 else f"lr_{g:g}_seed{s}.pt"
                res = load_torch(d / name, what="Oracle candidate result", required=("val_correct",))
                row.append(np.asarray(res["val_correct"], np.uint8))
            rows.append(np.stack(row))
        arrays[f"round{k}_grid"] = np.asarray(grid, float)
        arrays[f"round{k}_correct"] = np.stack(rows)
        arrays[f"round{k}_sparsity"] = np.asarray(float(meta["sparsity"]))
    return arrays


def extract(runs: Path, data: Path) -> None:
    """Every finished trajectory (profile and Oracle both complete) -> data/<config>/t<k>/."""
    for cfg_dir in sorted(p for p in runs.iterdir() if p.is_dir()):
        for tdir in sorted(cfg_dir.glob("t*")):
            prof, orc = tdir / "profile", tdir / "oracle"
            cfg = json.loads((orc / "config.json").read_text()) if (orc / "config.json").exists() else None
            done = cfg is not None and all((p / "rounds.json").exists() and len(json.loads(
                (p / "rounds.json").read_text())) >= cfg["prune"]["rounds"] for p in (prof, orc))
            if not done:
                print(f"[{cfg_dir.name}/{tdir.name}] not finished: skipped")
                continue
            dest = data / cfg_dir.name / tdir.name
            dest.mkdir(parents=True, exist_ok=True)
            extract_profile(prof).to_csv(dest / "profile.csv", index=False)
            extract_norms(prof).to_csv(dest / "norms.csv", index=False)
            # both probes runs' records are merged into the committed file (a record of the same round,
            # time and probe is replaced; records only the committed file has, e.g. the second run's
            # when its runs live elsewhere, are kept)
            for kind in ("probes", "probes2"):
                if (tdir / kind / "probes.json").exists():
                    _merge_probes(tdir / kind, dest)
            np.savez_compressed(dest / "oracle.npz", **extract_oracle(orc))
            (dest / "config.json").write_text(json.dumps({"profile": json.loads((prof / "config.json").read_text()),
                                                          "oracle": cfg}, indent=1, sort_keys=True))
            print(f"[{cfg_dir.name}/{tdir.name}] extracted to {dest}")


def _merge_probes(run: Path, dest: Path) -> int:
    """Add ``run``'s probe records to ``dest/probes.json`` (checksummed; a record of the same round,
    time and probe is replaced, every other record kept); the number of records added."""
    from gradscope.store.probes import read_probes, upsert_probes  # noqa: PLC0415

    recs = read_probes(run)
    upsert_probes(dest, recs)
    return len(recs)


def extract_probes(runs: Path, data: Path, kind: str = "probes2") -> None:
    """Only the records of each trajectory's ``kind`` probes run, merged into the committed
    ``data/<config>/t<k>/probes.json`` (profile.csv, norms.csv, oracle.npz and the first probes
    run's records are left as they are); a trajectory without committed data or whose run has
    not finished every round is skipped with a line."""
    for cfg_dir in sorted(p for p in runs.iterdir() if p.is_dir()):
        for tdir in sorted(cfg_dir.glob("t*"), key=lambda p: int(p.name[1:])):
            run, dest = tdir / kind, data / cfg_dir.name / tdir.name
            if not (run / "probes.json").exists():
                continue
            cfg = json.loads((run / "config.json").read_text())
            rows = json.loads((run / "rounds.json").read_text()) if (run / "rounds.json").exists() else []
            if len(rows) < cfg["prune"]["rounds"] or not (dest / "oracle.npz").exists():
                print(f"[{cfg_dir.name}/{tdir.name}] {kind}: not finished or no committed trajectory: skipped")
                continue
            n = _merge_probes(run, dest)
            print(f"[{cfg_dir.name}/{tdir.name}] {kind}: {n} probe records merged into {dest / 'probes.json'}")


# ----------------------------------------------------------------------------- analysis
P = 0.2  # the study's prune rate (predictor_study.COMMON)
N_BOOT = 1000
PREDICTORS = {  # name -> how its implied max_lr of round k is made from profile.csv (anchored at opt(0))
    "constant max_lr": None,
    "survivors std, all windows (default)": ("survivors_all", None),
    "survivors std, last window": ("survivors_last", None),
    "all-weights std, all windows (papers' view)": ("allw_all", None),
    "all-weights std, density part removed (the gate's measured part)": ("allw_all", "allw_null_ratio_all"),
}
SILO = "SILO ResNet-20 preset (rescaled to opt(0))"
ALLR = "ALLR norm drop"
VIEW_OF = {"survivors std, all windows (default)": ("survivors", "all", "std"),
           "survivors std, last window": ("survivors", "last", "std"),
           "all-weights std, all windows (papers' view)": ("all", "all", "std")}
MODEL_DATA = {"digits-small_cnn": ("small_cnn", "digits"), "digits-lenet_300_100": ("lenet_300_100", "digits"),
              "cifar10-resnet20": ("resnet20", "cifar10"), "cifar10-vgg11": ("vgg11", "cifar10")}


def load(data: Path) -> dict:
    """{config: {trajectory: (profile DataFrame, {round: (grid, correct, sparsity)})}}."""
    out: dict = {}
    for cdir in sorted(p for p in data.iterdir() if p.is_dir()):
        for tdir in sorted(cdir.glob("t*"), key=lambda p: int(p.name[1:])):
            z = np.load(tdir / "oracle.npz")
            rounds = sorted(int(k[5:-5]) for k in z.files if k.endswith("_grid"))
            orc = {k: (z[f"round{k}_grid"], z[f"round{k}_correct"].astype(bool), float(z[f"round{k}_sparsity"]))
                   for k in rounds}
            out.setdefault(cdir.name, {})[tdir.name] = (pd.read_csv(tdir / "profile.csv"), orc)
    return out


def load_norms(data: Path) -> pd.DataFrame:
    """Every trajectory's norms.csv with config and trajectory columns (empty if none)."""
    frames = []
    for f in sorted(data.glob("*/t*/norms.csv")):
        d = pd.read_csv(f)
        d.insert(0, "trajectory", f.parent.name)
        d.insert(0, "config", f.parent.parent.name)
        frames.append(d)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


PROBE_PREDICTORS = ("lr-range", "lr-range:steep", "lr-range:torch-lr-finder", "lr-range:divergence", "noise-scale",
                    "norm-drop", "bn-norm", "sharpness", "sharpness:bn-blocks", "eps-opt", "lr-free")
# sharpness's stability limits taken literally (no constant fitted): max_lr = c / lambda_max
SHARP_ABSOLUTE = {"probe sharpness 2/lambda_max (absolute)": lambda beta: 2.0,
                  "probe sharpness 2(1+beta)/lambda_max (absolute)": lambda beta: 2.0 * (1 + beta)}


def probe_implied(tdir: Path, opt0: float) -> tuple[dict, list]:
    """{"probe NAME": per-round implied max_lr (Series by round)} for the probes recorded in
    ``tdir/probes.json`` (issue 20), each rule's constant fitted on round 0 (norm-drop: round 1)
    and anchored at the Oracle's round-0 optimum like every other predictor; and their costs."""
    from gradscope.calibrate.predictor import predictor_points, predictor_values  # noqa: PLC0415
    from gradscope.store.probes import read_probes  # noqa: PLC0415
    from gradscope import GradscopeError  # noqa: PLC0415

    f = tdir / "probes.json"
    if not f.exists():
        return {}, []
    recs = read_probes(tdir, required=False)
    out, cost = {}, []
    for name in PROBE_PREDICTORS:
        try:
            v = predictor_values(recs, name)
            pts = predictor_points(v, name, max_lr0=opt0, p=P, lag=1)
        except GradscopeError:
            continue
        out[f"probe {name}"] = pts.set_index("round")["implied_max_lr"]
        cost.append(_cost(f"probe {name}", v))
        if name == "sharpness":  # the same measurement, the limits without a fitted constant
            beta = next((float(r["result"]["momentum"]) for r in recs if r["probe"] == "sharpness"), 0.9)
            lam = v.set_index("round")["value"]
            for label, c in SHARP_ABSOLUTE.items():
                out[label] = c(beta) / lam
                cost.append(_cost(label, v))
    return out, cost


def _cost(label: str, v: pd.DataFrame) -> dict:
    """A predictor's measurement noise (CV over repeats) and cost, medians over the rounds."""
    return {"predictor": label, "cv_median": float(pd.to_numeric(v["cv"], errors="coerce").median()),
            "fb_equiv_median": float(pd.to_numeric(v["fb_equiv"], errors="coerce").median()),
            "share_of_oracle_round_median": float(pd.to_numeric(v["share_of_oracle_round"], errors="coerce").median())}


def implied_table(prof: pd.DataFrame, opt0: float) -> pd.DataFrame:
    """Each predictor's max_lr per round, anchored at the Oracle's round-0 optimum ``opt0``."""
    from gradscope.oracle_stats import silo_max_lr  # noqa: PLC0415

    p = prof.set_index("round")
    out = pd.DataFrame(index=p.index)
    for name, how in PREDICTORS.items():
        if how is None:
            out[name] = opt0
            continue
        col, null = how
        ratio = p[col] / p[col].loc[0]
        if null is not None:
            ratio = ratio / p[null]
        out[name] = opt0 / ratio
    silo = silo_max_lr(p["sparsity"].to_numpy(float), P)
    out[SILO] = opt0 * silo / silo[0]
    nd = p["norm_drop"].astype(float).fillna(np.sqrt(P)).to_numpy()
    out[ALLR] = np.where(p.index > 0, opt0 * nd / np.sqrt(P), opt0)
    return out


def analyse(results: Path) -> None:
    """Every table of docs/findings.md's calibration study from ``results/data`` alone."""
    from gradscope.oracle_stats import (OracleRound, fit_optimum, judge, power_line, round_regrets,  # noqa: PLC0415
                                        score_predictions, trajectory, verdict_table)

    data = load(results / "data")
    if not data:
        raise SystemExit(f"no extracted trajectories under {results / 'data'}: run `extract` first")
    optima, traj_by_cfg, scores, per_round, spreads, powers, costs = [], {}, [], [], [], [], []
    for cfg, trajs in data.items():
        rounds_all, predicted = [], {}
        for tname, (prof, orc) in trajs.items():
            est = {k: fit_optimum(g, c, n_boot=N_BOOT, seed=k) for k, (g, c, _) in orc.items()}
            ks = sorted(est)
            for k in ks:
                e = est[k]
                optima.append({"config": cfg, "trajectory": tname, "round": k, "sparsity": orc[k][2],
                               "status": e.status, "optimum": e.optimum, "ci_lo": e.lo, "ci_hi": e.hi,
                               "argmax": e.argmax, "grid_lo": float(orc[k][0].min()), "grid_hi": float(orc[k][0].max()),
                               "seeds": e.n_seeds, "n_val": e.n_val})
            traj_by_cfg.setdefault(cfg, []).append(trajectory(f"{cfg}/{tname}", [orc[k][2] for k in ks],
                                                              [est[k] for k in ks]))
            e0 = est[0]
            opt0 = e0.optimum if e0.status == "interior" else e0.argmax
            imp = implied_table(prof, opt0)
            pimp, pcost = probe_implied(results / "data" / cfg / tname, opt0)
            for name, ser in pimp.items():
                imp[name] = imp.index.map(ser)
            for c in pcost:
                costs.append({"config": cfg, "trajectory": tname, **c})
            for k in ks:
                if k == 0:
                    continue
                rounds_all.append(OracleRound(tname, k, orc[k][2], est[k]))
                for name in imp.columns:
                    predicted.setdefault(name, {})[(tname, k)] = float(imp.loc[k, name])
            sp = prof.set_index("round")
            last = int(sp.index.max())
            for window in ("all", "last"):
                spreads.append({"config": cfg, "trajectory": tname, "window": window, "round": last,
                                "sparsity": float(sp.loc[last, "sparsity"]),
                                "survivors_ratio": float(sp.loc[last, f"survivors_{window}"] / sp.loc[0, f"survivors_{window}"]),
                                "all_ratio": float(sp.loc[last, f"allw_{window}"] / sp.loc[0, f"allw_{window}"]),
                                "null_ratio": float(sp.loc[last, f"allw_null_ratio_{window}"]),
                                "sqrt_recorded_density": float(np.sqrt(sp.loc[last, "recorded_density"])),
                                "sqrt_global_density": float(np.sqrt(1 - sp.loc[last, "sparsity"]))})
        # a predictor enters the score only where it has a value in every scored round
        complete = {n: v for n, v in predicted.items() if len(v) == len(rounds_all) and
                    all(np.isfinite(x) and x > 0 for x in v.values())}
        dropped = sorted(set(predicted) - set(complete))
        if dropped:
            print(f"[{cfg}] not scored (missing in some trajectories or rounds): {', '.join(dropped)}")
        predicted = complete
        sc = score_predictions(rounds_all, predicted, constant="constant max_lr")
        sc.insert(0, "config", cfg)
        scores.append(sc)
        rr, _ = round_regrets(rounds_all, predicted)
        rr.insert(0, "config", cfg)
        per_round.append(rr)
    verdicts = judge(traj_by_cfg, prune_rate=P)
    vt = verdict_table(verdicts)
    for v in verdicts:
        pl = power_line(traj_by_cfg[v.name], v.ci.tau2)
        powers.append({"config": v.name, "sentence": pl.sentence(), **{f"trajectories_at_{s}_seeds": n
                                                                          for s, n in pl.needed.items()}})
    out = results
    pd.DataFrame(optima).to_csv(out / "optima.csv", index=False)
    vt.to_csv(out / "slopes.csv", index=False)
    pd.DataFrame(powers).to_csv(out / "power.csv", index=False)
    scores_df = pd.concat(scores, ignore_index=True)
    scores_df.to_csv(out / "scores.csv", index=False)
    pd.concat(per_round, ignore_index=True).to_csv(out / "regret_per_round.csv", index=False)
    spreads_df = pd.DataFrame(spreads)
    spreads_df.to_csv(out / "spreads.csv", index=False)
    costs_df = pd.DataFrame(costs)
    if not costs_df.empty:
        costs_df = costs_df.groupby(["config", "predictor"], as_index=False).median(numeric_only=True)
        scores_df = scores_df.merge(costs_df, on=["config", "predictor"], how="left")
        scores_df.to_csv(out / "scores.csv", index=False)
    write_evidence(scores_df, EVIDENCE)
    print(vt.to_string(index=False))
    print(pd.DataFrame(powers)["sentence"].to_string(index=False))
    print(scores_df.to_string(index=False, float_format=lambda v: f"{v:.3g}"))
    tables = render_tables(vt, pd.DataFrame(powers), scores_df, spreads_df, pd.DataFrame(optima))
    tables += render_norms(load_norms(results / "data"))
    (out / "tables.md").write_text(tables)
    splice_findings(tables)
    plot(pd.DataFrame(optima), pd.concat(per_round, ignore_index=True), IMG / "calibration_study.png", verdicts)


HERE = Path(__file__).resolve().parent
EVIDENCE = HERE.parent / "gradscope" / "calibrate" / "evidence.csv"
FINDINGS = HERE.parent / "docs" / "findings.md"
IMG = HERE.parent / "docs" / "img"
BEGIN, END = "<!-- calibration-study tables: begin (written by analysis/calibration_study.py analyse) -->", \
    "<!-- calibration-study tables: end -->"


def write_evidence(scores: pd.DataFrame, path: Path) -> None:
    """gradscope's evidence table: one row per (configuration, predictor), read by `calibrate`."""
    rows = []
    for _, r in scores.iterrows():
        model, dataset = MODEL_DATA.get(r["config"], (r["config"], "?"))
        view, window, stat = VIEW_OF.get(r["predictor"], ("-", "-", "-"))
        rows.append({"study": "calibration study 2026-12 (digits, CPU)", "model": model, "dataset": dataset,
                     "view": view, "window": window, "statistic": stat, "predictor": r["predictor"],
                     "trajectories": int(r["trajectories"]), "rounds": int(r["rounds"]),
                     "metric": "regret (val acc points lost vs the Oracle's optimum)", "value": r["regret_points"],
                     "value_lo": r["regret_lo"], "value_hi": r["regret_hi"],
                     "vs_constant": r["diff_vs_constant"], "vs_constant_lo": r["diff_lo"],
                     "vs_constant_hi": r["diff_hi"], "verdict": r["verdict"], "level": r["level"]})
    pd.DataFrame(rows).to_csv(path, index=False)


def _f(v, fmt=".3g") -> str:
    return "–" if v is None or (isinstance(v, float) and not np.isfinite(v)) else format(v, fmt)


def render_tables(vt, powers, scores, spreads, optima) -> str:
    """The markdown tables of docs/findings.md's calibration study."""
    L = ["**Table A. Does the Oracle's best max_lr rise with sparsity?** Slope of log(optimum) on sparsity "
         "as a factor per unit of sparsity, CI over trajectories (random-slope model; Bonferroni over the "
         f"{len(vt)} configurations), against flat (x1) and SILO's preset rise over the same sparsities.", "",
         "| configuration | trajectories | interior rounds | factor per unit sparsity | CI | SILO's rise | verdict |",
         "|---|---|---|---|---|---|---|"]
    for _, r in vt.iterrows():
        L.append(f"| {r['configuration']} | {r['trajectories']} | {r['rounds']} | x{_f(r['factor'])} | "
                 f"x{_f(r['factor_lo'])} .. x{_f(r['factor_hi'])} ({100 * r['level']:.1f} %) | x{_f(r['silo_factor'])} | "
                 f"{r['verdict']} |")
    L += ["", "**Power.** " + " ".join(f"{c}: {s}" for c, s in zip(powers["config"], powers["sentence"])), ""]
    L += ["**Table B. Predictors scored by regret** (validation accuracy points lost by training at the "
          "predictor's max_lr instead of the Oracle's optimum, on the Oracle's fitted accuracy curve, its "
          "bootstrap carried through; rounds k >= 1; every predictor anchored at the Oracle's round-0 optimum "
          "except the two '(absolute)' rows; 95 % CI over trajectories). 'vs constant' is the paired difference "
          "(negative = fewer points lost).", "",
          "Probes (issue 20) were measured at each round's start of a third run with the profile's recipe "
          "(lr-range, noise-scale, norm-drop, bn-norm) and of a fourth (sharpness: Lanczos with 6 vectors, tol "
          "1e-2, 4 batches; eps-opt: 4 batches; lr-free: D-Adaptation SGD, 100 steps); cost is in "
          "forward+backward passes per measurement (measured wall time / one measured pass) and as a share of "
          "an Oracle round (7 x 3), noise is the CV over 3 repeats with different probe seeds (medians over "
          "rounds and trajectories). With a constant fitted on round 0, 2/lambda_max and 2(1+beta)/lambda_max "
          "are one rule ('probe sharpness'); the '(absolute)' rows take them literally as max_lr.", "",
          "| configuration | predictor | regret (points) | CI | vs constant | CI | Spearman rho | in Oracle CI | verdict | cost (passes; share) | noise (CV) |",
          "|---|---|---|---|---|---|---|---|---|---|---|"]
    for _, r in scores.iterrows():
        cost = (f"{_f(r.get('fb_equiv_median'))}; {_f(100 * r.get('share_of_oracle_round_median', np.nan), '.2g')} %"
                if np.isfinite(r.get("fb_equiv_median", np.nan)) else "–")
        L.append(f"| {r['config']} | {r['predictor']} | {_f(r['regret_points'])} | {_f(r['regret_lo'])} .. "
                 f"{_f(r['regret_hi'])} | {_f(r['diff_vs_constant'], '+.3g')} | {_f(r['diff_lo'], '+.3g')} .. "
                 f"{_f(r['diff_hi'], '+.3g')} | {_f(r['spearman_rho'], '.2f')} | {_f(r['share_in_oracle_ci'], '.2f')} | "
                 f"{r['verdict']} | {cost} | {_f(r.get('cv_median', np.nan), '.2g')} |")
    L += ["", "**Table C. What narrows, under which view and window** (last round; ratio of the pooled std to "
          "round 0; mean over trajectories, min .. max). The all-weights view's pruning-only null uses the "
          "recorded layers' own densities and round-0 moments.", "",
          "| configuration | window | sparsity | survivors | all weights | pruning-only null | sqrt(recorded density) | sqrt(global density) |",
          "|---|---|---|---|---|---|---|---|"]
    for (cfg, w), g in spreads.groupby(["config", "window"], sort=True):
        def mm(c):
            return f"{g[c].mean():.3g} ({g[c].min():.3g} .. {g[c].max():.3g})"
        L.append(f"| {cfg} | {w} | {g['sparsity'].mean():.3f} | {mm('survivors_ratio')} | {mm('all_ratio')} | "
                 f"{mm('null_ratio')} | {mm('sqrt_recorded_density')} | {mm('sqrt_global_density')} |")
    st = optima.groupby("config")["status"].value_counts().unstack(fill_value=0)
    L += ["", "**Oracle rounds by status** (all rounds of all trajectories): " +
          "; ".join(f"{c}: " + ", ".join(f"{k} {int(v)}" for k, v in row.items() if v) for c, row in st.iterrows()), ""]
    return "\n".join(L) + "\n"


def render_norms(norms: pd.DataFrame) -> str:
    """Table D: per layer at the last round, density and the kept share of the rewound weights'
    squared norm, beside the sqrt(density) that a uniform pruning would leave."""
    if norms.empty:
        return ""
    L = ["", "**Table D. How much of a rewound layer's norm survives** (last round, mean over trajectories): "
         "r = ||m * w_init||^2 / ||w_init||^2. A BatchNorm-followed layer's gradient scales as 1/||w||, so "
         "its survivors' gradients would grow by 1/sqrt(r), not 1/sqrt(density).", "",
         "| configuration | layer | round | density | kept squared norm r | norm ratio sqrt(r) | sqrt(density) | 1/sqrt(r) |",
         "|---|---|---|---|---|---|---|---|"]
    last = norms.groupby("config")["round"].transform("max")
    for (cfg, layer), g in norms[norms["round"] == last].groupby(["config", "layer"], sort=True):
        r, d = g["kept_sqnorm"].mean(), g["density"].mean()
        L.append(f"| {cfg} | {layer} | {int(g['round'].iloc[0])} | {d:.3f} | {r:.3f} | {np.sqrt(r):.3f} | "
                 f"{np.sqrt(d):.3f} | {1 / np.sqrt(r):.3f} |")
    return "\n".join(L) + "\n"


def splice_findings(tables: str) -> None:
    """Replace the generated block of docs/findings.md (between the markers) with ``tables``."""
    text = FINDINGS.read_text()
    if BEGIN in text and END in text:
        a, b = text.index(BEGIN) + len(BEGIN), text.index(END)
        FINDINGS.write_text(text[:a] + "\n" + tables + text[b:])
    else:
        print(f"note: {FINDINGS} has no generated block; tables are in tables.md")


def plot(optima: pd.DataFrame, per_round: pd.DataFrame, path: Path, verdicts=None) -> None:
    """Per configuration: every trajectory's interior Oracle optima (faint), their geometric mean
    per round, the slope over trajectories with its CI (fan) beside SILO's rise, and what the
    default predictor, sharpness (where measured) and a constant implied (geometric means over
    trajectories)."""
    import matplotlib  # noqa: PLC0415
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    vmap = {v.name: v for v in (verdicts or [])}
    cfgs = list(dict.fromkeys(optima["config"]))
    fig, axes = plt.subplots(1, len(cfgs), figsize=(5.6 * len(cfgs), 4.6), squeeze=False)
    for ax, cfg in zip(axes[0], cfgs):
        o = optima[optima["config"] == cfg]
        inner = o[o["status"] == "interior"]
        n_t = o["trajectory"].nunique()
        ax.scatter(inner["sparsity"], inner["optimum"], s=10, alpha=0.35, color="C0",
                   label=f"Oracle optimum, one trajectory's round ({len(inner)} interior of {len(o)})")
        g = inner.groupby("round").agg(sparsity=("sparsity", "mean"), lopt=("optimum", lambda v: np.log(v).mean()))
        ax.plot(g["sparsity"], np.exp(g["lopt"]), "ks", ms=4, label="geometric mean over trajectories")
        v = vmap.get(cfg)
        if v is not None and len(inner):
            xs = np.linspace(0, float(o["sparsity"].max()), 50)
            xb, a = float(inner["sparsity"].mean()), float(np.log(inner["optimum"]).mean())
            ax.plot(xs, np.exp(a + v.ci.slope * (xs - xb)), "C3-", lw=1.5,
                    label=f"slope over trajectories x{v.ci.factor:.2g}/unit ({v.verdict})")
            ax.fill_between(xs, np.exp(a + v.ci.lo * (xs - xb)), np.exp(a + v.ci.hi * (xs - xb)), color="C3",
                            alpha=0.12, label=f"its {100 * v.ci.level:.1f} % CI ({v.ci.scope})")
            ax.plot(xs, np.exp(a + v.reference * (xs - xb)), "C2--", lw=1, label=f"SILO's preset rise x{np.exp(v.reference):.2g}/unit")
        pr = per_round[per_round["config"] == cfg]
        for name, style, color in (("survivors std, all windows (default)", "-", "k"), ("constant max_lr", ":", "k"),
                                   ("probe sharpness", "-.", "C1")):
            q = pr[pr["predictor"] == name].groupby("round")[["sparsity", "max_lr"]].agg(
                {"sparsity": "mean", "max_lr": lambda m: np.exp(np.log(m).mean())})
            if len(q):
                ax.plot(q["sparsity"], q["max_lr"], style, color=color, lw=1, label=f"implied: {name}")
        ax.set_yscale("log")
        ax.set_xlabel("sparsity (fraction of prunable weights pruned)")
        ax.set_ylabel("max_lr")
        ax.set_title(f"{cfg}: {n_t} trajector{'y' if n_t == 1 else 'ies'}, 7 max_lr x 3 seeds per round", fontsize=9)
        ax.legend(fontsize=6, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2, frameon=False)
    fig.suptitle("Calibration study (digits, CPU): does the Oracle's best max_lr rise with sparsity?", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130, bbox_inches="tight")
    plt.close(fig)
