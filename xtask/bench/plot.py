"""Plots for `cargo xtask bench`: reads its results.json, writes PNGs into the given folder.

usage: plot.py RESULTS_JSON OUT_DIR
"""
import json
import pathlib
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

results = json.loads(pathlib.Path(sys.argv[1]).read_text())
out = pathlib.Path(sys.argv[2])
out.mkdir(parents=True, exist_ok=True)


def series(ax_rps, ax_lat, label, points, style="-o"):
    c = [p["concurrency"] for p in points]
    line = ax_rps.plot(c, [p["rps"] for p in points], style, label=label)[0]
    ax_lat.plot(c, [p["p50_us"] / 1000 for p in points], style, color=line.get_color(), label=f"{label} p50")
    ax_lat.plot(c, [p["p99_us"] / 1000 for p in points], ":", marker="x", color=line.get_color(), label=f"{label} p99")


def figure(name, title, groups):
    """groups: list of (subtitle, [(label, points)])"""
    fig, axes = plt.subplots(len(groups), 2, figsize=(12, 4.2 * len(groups)), squeeze=False)
    for row, (subtitle, lines) in enumerate(groups):
        ax_rps, ax_lat = axes[row]
        for label, points in lines:
            if points:
                series(ax_rps, ax_lat, label, points)
        for ax in (ax_rps, ax_lat):
            ax.set_xscale("log", base=2)
            ax.set_xlabel("concurrency (connections / threads)")
            ax.grid(True, alpha=0.3)
        ax_rps.set_ylabel("requests/s")
        ax_rps.set_ylim(bottom=0)
        ax_rps.set_title(f"{subtitle}: throughput")
        ax_rps.legend(fontsize=8)
        ax_lat.set_ylabel("latency (ms)")
        ax_lat.set_yscale("log")
        ax_lat.set_title(f"{subtitle}: latency")
        ax_lat.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out / f"{name}.png", dpi=90)
    plt.close(fig)


o = results["overhead"]
figure("overhead", "1. Host overhead: EfficientNet-Lite0 on a raw tensor", [
    ("EfficientNet-Lite0", [("ONNX Runtime in process", o["native"]), ("Corral over HTTP", o["corral"])]),
])
f = results["fixed"]
figure("fixed", "2. Fixed overhead", [
    ("hello-world component", [("Corral", f["corral_hello"]), ("wasmtime serve", f["wasmtime_hello"])]),
    ("tiny MLP", [("ONNX Runtime in process", f["native_mlp"]), ("Corral over HTTP (JSON)", f["corral_mlp"])]),
])
p = results["python"]
figure("python", "3. Corral against a Python server (Starlette + uvicorn + Pillow + onnxruntime)", [
    ("EfficientNet-Lite0, JPEG in", [("Corral image-classifier", p["corral_image"])]
     + [(f"Python {k}", v["image"]) for k, v in p["python"].items()]),
    ("tabular MLP, JSON in", [("Corral", p["corral_json"])]
     + [(f"Python {k}", v["json"]) for k, v in p["python"].items()]),
])

d = results["density"]
fig, ax = plt.subplots(figsize=(7, 4.2))
for kind, label in (("same", "same component and model"), ("distinct", "a distinct component each")):
    points = d[kind]["points"]
    ax.plot([q["tenants"] for q in points], [q["rss_mib"] for q in points], "-o", label=label)
ax.set_xscale("log")
ax.set_xlabel("tenants deployed")
ax.set_ylabel("resident memory (MiB)")
ax.set_title("5. Density: corral serve's RSS")
ax.grid(True, alpha=0.3)
ax.legend()
fig.tight_layout()
fig.savefig(out / "density.png", dpi=90)
plt.close(fig)
