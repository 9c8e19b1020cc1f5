#!/usr/bin/env python3
"""bench/compare/report.py: turns the JSON lines of bench/compare/run into <out>/results.md (a
markdown section: command, machine, date, versions, and per workload the median, min-max and the
tinylora/peer ratio with its better direction) and <out>/compare.h5 (one group per workload/system
with the per-round values, attributes for units, versions and command).

It also proves the loss workloads did the same work: tinylora's and PyTorch's losses must agree to
1e-3 relative in fp32 (2e-2 in bf16, where both round differently); otherwise it fails loudly.

Usage: report.py --results build/compare/results.jsonl --inputs build/compare/inputs.json
                 --out build/compare --command "bench/compare/run ..." [--threads 2]
"""
import argparse
import datetime
import json
import os
import platform
import statistics
import sys
from pathlib import Path

# workload -> (title, metric key, unit, higher is better, what the work is)
WORKLOADS = {
    "w1_fp32": ("W1 loss evaluation, fp32", "tokens_per_s", "tokens/s", True,
                "masked next-token CE, 16 GSM8K examples (chat prompt + answer, <= 512 tokens) in one batch"),
    "w1_bf16": ("W1 loss evaluation, bf16", "tokens_per_s", "tokens/s", True,
                "as W1 with bf16 weights (tinylora precision::Bf16, torch dtype=bfloat16)"),
    "w2": ("W2 TinyLoRA training step, b = 13", "tokens_per_s", "tokens/s", True,
           "forward + backward of the masked token-mean loss, first 4 W1 examples, 13 trainable scalars"),
    "w3": ("W3 rollout generation", "tokens_per_s", "generated tokens/s", True,
           "8 GSM8K prompts x 4 samples x 128 new tokens, temperature 1, no top-k/top-p, EOS ignored"),
    "w4": ("W4 adapter initialization", "seconds", "s", False,
           "rank-2 truncated SVD of the 210 target matrices (TinyLoRA b = 13), model loading excluded"),
}
PRECISION_NOTE = {"tinylora": "fp32", "pytorch": "fp32", "llama.cpp": "Q4_1 as stored"}
LOSS_TOLERANCE = {"w1_fp32": 1e-3, "w1_bf16": 2e-2}


def machine() -> str:
    model_name, flags = "unknown CPU", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and model_name == "unknown CPU":
                model_name = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    simd = "/".join(f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16") if f in flags) or "no AVX2"
    return f"{model_name} ({simd}), nproc {os.cpu_count()} ({len(os.sched_getaffinity(0))} usable), {platform.system()} {platform.release()}"


def fmt(x: float) -> str:
    return f"{x:.3g}" if abs(x) < 100 else f"{x:.0f}"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", required=True)
    parser.add_argument("--inputs", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--command", default="bench/compare/run")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    rows = [json.loads(line) for line in Path(args.results).read_text().splitlines() if line.strip()]
    inputs = json.loads(Path(args.inputs).read_text())
    if not rows:
        sys.exit("report.py: no results in " + args.results)

    # (workload, system) -> rows in round order
    cells = {}
    for r in rows:
        cells.setdefault((r["workload"], r["system"]), []).append(r)
    versions = {}
    for r in rows:
        for k, v in r.get("versions", {}).items():
            versions[k] = v

    # The BLAS tinylora's GEMMs ran on, and its kernel (checked against the CPU at startup).
    blas = sorted({f"{r['blas']}, kernel {r['blas_kernel']}"
                   + (f" (OpenBLAS chose {r['blas_kernel_chosen']}, {r['blas_kernel_action']})"
                      if r.get("blas_kernel_action", "none") != "none" else "")
                   for r in rows if r["system"] == "tinylora" and "blas" in r})

    # The same work: losses must agree.
    errors, loss_lines = [], []
    for w, tol in LOSS_TOLERANCE.items():
        if (w, "tinylora") in cells and (w, "pytorch") in cells:
            a, b = cells[(w, "tinylora")][0]["loss"], cells[(w, "pytorch")][0]["loss"]
            rel = abs(a - b) / abs(b)
            loss_lines.append(f"- {w}: loss tinylora {a:.6f}, PyTorch {b:.6f}, relative difference {rel:.1e} "
                              f"(limit {tol:g})")
            if rel > tol:
                errors.append(f"{w}: tinylora's loss {a:.6f} and PyTorch's {b:.6f} differ by {rel:.2e} relative "
                              f"(limit {tol:g}): the two sides did not do the same work")

    n_rounds = max(r["round"] for r in rows)
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    md = [f"## Side by side: tinylora vs PyTorch + PEFT vs llama.cpp ({date})", "",
          f"Command: `{args.command}`  ",
          f"Machine: {machine()}; every system on {args.threads} threads  ",
          f"Model: `{Path(inputs['model']).name}` (sha256 {inputs['model_sha256'][:12]}...), "
          f"data: `{Path(inputs['data']).name}` (sha256 {inputs['data_sha256'][:12]}...)  ",
          f"Rounds: {n_rounds}, each measurement a fresh process: load, one untimed warm-up call, one timed call  ",
          "tinylora's GEMM: " + ("; ".join(blas) if blas else "not recorded") + "  ",
          "Versions: " + ", ".join(f"{k} {v}" for k, v in sorted(versions.items())), "",
          "| workload | system | precision | median | min-max | unit | tinylora / peer |",
          "|---|---|---|---|---|---|---|"]
    summary = {}
    for w, (title, key, unit, higher, _) in WORKLOADS.items():
        systems = [s for s in ("tinylora", "pytorch", "llama.cpp") if (w, s) in cells]
        if not systems:
            continue
        values = {s: [r[key] for r in cells[(w, s)]] for s in systems}
        medians = {s: statistics.median(v) for s, v in values.items()}
        summary[w] = (values, medians)
        better = "higher is better" if higher else "lower is better"
        for s in systems:
            v = values[s]
            precision = cells[(w, s)][0].get("precision", PRECISION_NOTE[s])
            if s == "tinylora":
                ratio = "-"
            elif "tinylora" in medians:
                # speed-up of tinylora over this peer, > 1 means tinylora is better
                r = medians["tinylora"] / medians[s] if higher else medians[s] / medians["tinylora"]
                ratio = f"{r:.2f}x ({'tinylora faster' if r > 1 else 'peer faster'})"
            else:
                ratio = "n/a"
            md.append(f"| {title} | {s} | {precision} | {fmt(medians[s])} | {fmt(min(v))}-{fmt(max(v))} | "
                      f"{unit} ({better}) | {ratio} |")
    md += ["", "tinylora / peer: tinylora's median over the peer's for throughput (tokens/s), the peer's over "
           "tinylora's for time (s); above 1 means tinylora is better.", ""]
    extra = []
    for w in ("w2",):
        for s in ("tinylora", "pytorch"):
            if (w, s) in cells:
                rss = [r["peak_rss_mib"] for r in cells[(w, s)]]
                c = cells[(w, s)][0]
                extra.append(f"- W2 {s}: peak RSS (process, model load included) median {statistics.median(rss):.0f} MiB; "
                             f"{c.get('trainable')} trainable scalars on {c.get('modules')} modules; loss {c['loss']:.6f}")
    md += ["Same work:"] + loss_lines + extra + ["",
           "Workloads (details in bench/compare/README.md):"]
    md += [f"- {title}: {what}" for w, (title, _, _, _, what) in WORKLOADS.items() if w in summary]
    md.append("- Precision: tinylora and PyTorch run the Q4_1 GGUF dequantized to fp32 (or bf16 in W1 bf16); "
              "llama.cpp runs the Q4_1 weights as stored, so W3's llama.cpp column is not the same arithmetic.")
    if errors:
        md += ["", "**FAILED: " + "; ".join(errors) + "**"]
    out = Path(args.out)
    (out / "results.md").write_text("\n".join(md) + "\n")

    import h5py
    import numpy as np
    with h5py.File(out / "compare.h5", "w") as f:
        f.attrs["command"] = args.command
        f.attrs["machine"] = machine()
        f.attrs["date"] = date
        f.attrs["threads"] = args.threads
        f.attrs["model"] = inputs["model"]
        f.attrs["model_sha256"] = inputs["model_sha256"]
        f.attrs["data"] = inputs["data"]
        f.attrs["data_sha256"] = inputs["data_sha256"]
        f.attrs["format_version"] = 1
        for (w, s), rs in sorted(cells.items()):
            title, key, unit, higher, what = WORKLOADS[w]
            g = f.create_group(f"{w}/{s}")
            g.attrs["workload"] = title
            g.attrs["description"] = what
            g.attrs["metric"] = key
            g.attrs["unit"] = unit
            g.attrs["higher_is_better"] = higher
            g.attrs["versions"] = json.dumps(rs[0].get("versions", {}))
            g.attrs["precision"] = rs[0].get("precision", PRECISION_NOTE[s])
            g.create_dataset("round", data=np.array([r["round"] for r in rs], dtype=np.int64))
            for k in sorted({k for r in rs for k, v in r.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}):
                if k == "round":
                    continue
                g.create_dataset(k, data=np.array([float(r.get(k, float("nan"))) for r in rs]))
            g[key].attrs["unit"] = unit
    print((out / "results.md").read_text())
    print(f"report.py: wrote {out / 'results.md'} and {out / 'compare.h5'}")
    if errors:
        sys.exit("report.py: FAILED: " + "; ".join(errors))


if __name__ == "__main__":
    main()
