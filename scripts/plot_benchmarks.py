#!/usr/bin/env python3
"""Turn the results of benches/crypto.rs into tables and a plot.

Reads the interleaved run's target/ratios.json (or --ratios FILE) when it
exists, and criterion's newest estimates under target/criterion (or
--criterion DIR) otherwise. Prints Markdown tables of operations per second
with the target ratios, and writes an SVG plot of throughput by payload
size for trustwire and each peer (to docs/benchmarks.svg, or to the file
that --svg names).

In the interleaved run every ratio is the median of per-round ratios, which
load on a shared machine moves far less than a ratio of two criterion
benchmarks measured minutes apart.

Only the Python standard library is used, so the script runs wherever the
benchmarks do.

    TRUSTWIRE_RATIOS=1 cargo bench --bench crypto
    python3 scripts/plot_benchmarks.py > /tmp/tables.md
"""

import argparse
import json
import math
import sys
from pathlib import Path

SIZES = ["64B", "1KiB", "16KiB", "256KiB"]
SIZE_BYTES = {"64B": 64, "1KiB": 1024, "16KiB": 16 * 1024, "256KiB": 256 * 1024}
SIZE_TEXT = {"64B": "64 B", "1KiB": "1 KiB", "16KiB": "16 KiB", "256KiB": "256 KiB"}

# Raw primitives that the targets are measured against, per group. The
# floor is the fastest of them at each size. Plain `verify` is a floor: with
# two checks that cost nanoseconds (s below the group order, R not of small
# order) it accepts what `verify_strict` accepts, and trustwire runs it so
# when it is the faster backend.
SIGN_FLOORS = ["ed25519-dalek", "aws-lc-rs"]
VERIFY_FLOORS = ["ed25519-dalek verify_strict", "ed25519-dalek verify", "aws-lc-rs"]

# Line colours of the plot, one per implementation.
COLOURS = {
    "trustwire": "#d62728",
    "ed25519-dalek": "#1f77b4",
    "ed25519-dalek verify_strict": "#1f77b4",
    "ed25519-dalek verify": "#aec7e8",
    "aws-lc-rs": "#ff7f0e",
    "jsonwebtoken": "#2ca02c",
    "jwt-simple": "#9467bd",
    "josekit": "#8c564b",
}


def load_ratios(path):
    """Returns ({(group, implementation, size): seconds per operation},
    {(group, implementation, size): median ratio}) from an interleaved run.
    The ratio is to the floor, or to `trustwire single` in verify_batch."""
    results, ratios = {}, {}
    for row in json.loads(path.read_text()):
        key = (row["group"], row["implementation"], row["size"])
        results[key] = 1.0 / row["ops_per_second"]
        ratio = row.get("ratio_to_floor") or row.get("ratio_to_single")
        if ratio is not None:
            ratios[key] = ratio
    return results, ratios


def load(criterion_dir):
    """Returns {(group, implementation, size): seconds per iteration}."""
    results = {}
    for benchmark_file in criterion_dir.glob("*/*/*/new/benchmark.json"):
        benchmark = json.loads(benchmark_file.read_text())
        estimates = json.loads((benchmark_file.parent / "estimates.json").read_text())
        group = benchmark["group_id"]
        implementation = benchmark["function_id"]
        size = benchmark["value_str"]
        # Criterion's estimates are in nanoseconds per iteration.
        results[(group, implementation, size)] = estimates["median"]["point_estimate"] * 1e-9
    return results


def per_second(results, group, implementation, size, per_iteration=1):
    seconds = results.get((group, implementation, size))
    if seconds is None:
        return None
    return per_iteration / seconds


def implementations(results, group):
    names = sorted({name for (g, name, _) in results if g == group})
    # trustwire first, then the raw primitives, then the peers.
    order = lambda name: (not name.startswith("trustwire"), name not in SIGN_FLOORS + VERIFY_FLOORS, name)
    return sorted(names, key=order)


def format_rate(rate):
    if rate is None:
        return "n/a"
    return f"{rate:,.0f}"


def format_ratio(numerator, denominator):
    if numerator is None or denominator is None:
        return "n/a"
    return f"{numerator / denominator:.2f}×"


def floor(results, group, floors, size):
    rates = [per_second(results, group, name, size) for name in floors]
    rates = [rate for rate in rates if rate is not None]
    return max(rates) if rates else None


def table(results, group, floors, per_iteration=1, ratios=None):
    """A Markdown table of ops/s per implementation and size, with each row's
    ratio to the floor when floors are given. Ratios measured in an
    interleaved run (`ratios`) take the place of ratios of two rates."""
    sizes = [size for size in SIZES if any((group, name, size) in results for name in implementations(results, group))]
    header = "| implementation | " + " | ".join(f"{SIZE_TEXT[size]} ops/s" for size in sizes) + " |"
    if floors:
        header += " " + " | ".join(f"{SIZE_TEXT[size]} vs floor" for size in sizes) + " |"
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for name in implementations(results, group):
        rates = [per_second(results, group, name, size, per_iteration) for size in sizes]
        row = f"| {name} | " + " | ".join(format_rate(rate) for rate in rates) + " |"
        if floors and ratios:
            measured = [ratios.get((group, name, size)) for size in sizes]
            row += " " + " | ".join("n/a" if value is None else f"{value:.2f}×" for value in measured) + " |"
        elif floors:
            floor_rates = [floor(results, group, floors, size) for size in sizes]
            row += " " + " | ".join(format_ratio(rate, base) for rate, base in zip(rates, floor_rates)) + " |"
        lines.append(row)
    return "\n".join(lines)


def targets(results, ratios):
    """Returns the target ratios of docs/benchmarks.md as measured in this
    run, as a Markdown table."""
    lines = ["| target | measured | met |", "|---|---|---|"]

    def measured(group, name, size, fallback):
        return ratios.get((group, name, size), fallback) if ratios else fallback

    def add(name, value, goal):
        if value is None:
            lines.append(f"| {name} | not measured | no |")
        else:
            lines.append(f"| {name} | {value:.2f}× | {'yes' if value >= goal else 'no'} |")

    sign = per_second(results, "sign", "trustwire", "1KiB")
    sign_floor = floor(results, "sign", SIGN_FLOORS, "1KiB")
    add("sign at 1 KiB ≥ 0.9× the signing floor", measured("sign", "trustwire", "1KiB", ratio(sign, sign_floor)), 0.9)

    verify = per_second(results, "verify", "trustwire", "1KiB")
    verify_floor = floor(results, "verify", VERIFY_FLOORS, "1KiB")
    add(
        "verify at 1 KiB ≥ 0.9× the verifying floor",
        measured("verify", "trustwire", "1KiB", ratio(verify, verify_floor)),
        0.9,
    )

    for size in SIZES:
        single = per_second(results, "verify_batch", "trustwire single", size)
        batch = per_second(results, "verify_batch", "trustwire batch", size)
        value = measured("verify_batch", "trustwire batch", size, ratio(batch, single))
        add(f"batch of 64 at {SIZE_TEXT[size]} ≥ 2× single, per message", value, 2.0)

    for group in ["seal", "open"]:
        ours = per_second(results, group, "trustwire", "1KiB")
        josekit = per_second(results, group, "josekit", "1KiB")
        add(f"{group} at 1 KiB ≥ 2× josekit (JWE and signed token)", ratio(ours, josekit), 2.0)

    for peer in ["jsonwebtoken", "jwt-simple", "josekit"]:
        for group, ours in [("sign", sign), ("verify", verify)]:
            value = ratio(ours, per_second(results, group, peer, "1KiB"))
            text = "not measured" if value is None else f"{value:.2f}×"
            lines.append(f"| {group} at 1 KiB vs {peer} | {text} | (comparison) |")
    return "\n".join(lines)


def ratio(numerator, denominator):
    if numerator is None or denominator is None:
        return None
    return numerator / denominator


def svg_plot(results, path):
    """Writes one log-log panel per group: ops/s by payload size."""
    groups = [group for group in ["sign", "verify", "seal", "open"] if any(g == group for (g, _, _) in results)]
    panel_width, panel_height = 430, 330
    margin_left, margin_top, margin_bottom = 70, 40, 50
    plot_width, plot_height = panel_width - margin_left - 20, panel_height - margin_top - margin_bottom
    legend_height = 24 * 4
    width = panel_width * min(len(groups), 2)
    height = panel_height * math.ceil(len(groups) / 2) + legend_height

    rates = [per_second(results, g, n, s) for (g, n, s) in results if g in groups]
    low = 10 ** math.floor(math.log10(min(rates)))
    high = 10 ** math.ceil(math.log10(max(rates)))
    x_low, x_high = math.log2(64), math.log2(256 * 1024)

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'font-family="sans-serif" font-size="12">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
    ]
    names_seen = []
    for index, group in enumerate(groups):
        origin_x = (index % 2) * panel_width + margin_left
        origin_y = (index // 2) * panel_height + margin_top

        def x_of(size):
            return origin_x + (math.log2(SIZE_BYTES[size]) - x_low) / (x_high - x_low) * plot_width

        def y_of(rate):
            return origin_y + plot_height - (math.log10(rate) - math.log10(low)) / (
                math.log10(high) - math.log10(low)
            ) * plot_height

        out.append(
            f'<text x="{origin_x + plot_width / 2}" y="{origin_y - 15}" text-anchor="middle" '
            f'font-size="14" font-weight="bold">{group}</text>'
        )
        out.append(
            f'<rect x="{origin_x}" y="{origin_y}" width="{plot_width}" height="{plot_height}" '
            f'fill="none" stroke="#444"/>'
        )
        decade = low
        while decade <= high:
            y = y_of(decade)
            out.append(f'<line x1="{origin_x}" y1="{y}" x2="{origin_x + plot_width}" y2="{y}" stroke="#ddd"/>')
            out.append(f'<text x="{origin_x - 6}" y="{y + 4}" text-anchor="end">{decade:,.0f}</text>')
            decade *= 10
        for size in SIZES:
            out.append(f'<text x="{x_of(size)}" y="{origin_y + plot_height + 18}" text-anchor="middle">{SIZE_TEXT[size]}</text>')
        out.append(
            f'<text x="{origin_x - 55}" y="{origin_y + plot_height / 2}" text-anchor="middle" '
            f'transform="rotate(-90 {origin_x - 55} {origin_y + plot_height / 2})">ops/s per core</text>'
        )

        for name in implementations(results, group):
            points = [(x_of(size), y_of(rate)) for size in SIZES
                      if (rate := per_second(results, group, name, size)) is not None]
            colour = COLOURS.get(name, "#7f7f7f")
            dash = ' stroke-dasharray="5,3"' if name in SIGN_FLOORS + VERIFY_FLOORS else ""
            width_px = 3 if name == "trustwire" else 1.5
            path_data = " ".join(f"{x:.1f},{y:.1f}" for x, y in points)
            out.append(f'<polyline points="{path_data}" fill="none" stroke="{colour}" stroke-width="{width_px}"{dash}/>')
            for x, y in points:
                out.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{colour}"/>')
            if name not in names_seen:
                names_seen.append(name)

    legend_top = height - legend_height + 10
    for index, name in enumerate(names_seen):
        x = 20 + (index % 3) * (width - 40) / 3
        y = legend_top + (index // 3) * 22
        colour = COLOURS.get(name, "#7f7f7f")
        dash = ' stroke-dasharray="5,3"' if name in SIGN_FLOORS + VERIFY_FLOORS else ""
        out.append(f'<line x1="{x}" y1="{y}" x2="{x + 30}" y2="{y}" stroke="{colour}" stroke-width="2.5"{dash}/>')
        label = name + (" (raw floor)" if name in SIGN_FLOORS + VERIFY_FLOORS else "")
        out.append(f'<text x="{x + 36}" y="{y + 4}">{label}</text>')
    out.append("</svg>")
    path.write_text("\n".join(out) + "\n")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ratios", type=Path, default=Path("target/ratios.json"),
                        help="results of the interleaved run (default: target/ratios.json)")
    parser.add_argument("--criterion", type=Path, default=Path("target/criterion"),
                        help="criterion's output directory, read when --ratios does not exist "
                             "(default: target/criterion)")
    parser.add_argument("--svg", type=Path, default=Path("docs/benchmarks.svg"),
                        help="where to write the plot (default: docs/benchmarks.svg)")
    args = parser.parse_args()

    if args.ratios.exists():
        results, ratios = load_ratios(args.ratios)
        per_batch = 1
    else:
        results, ratios = load(args.criterion), {}
        per_batch = 64
    if not results:
        sys.exit(f"no results in {args.ratios} or under {args.criterion}: run `cargo bench --bench crypto` first")

    print("### Targets\n")
    print(targets(results, ratios))
    print("\n### sign (ops/s per core)\n")
    print(table(results, "sign", SIGN_FLOORS, ratios=ratios))
    print("\n### verify (ops/s per core)\n")
    print(table(results, "verify", VERIFY_FLOORS, ratios=ratios))
    print("\n### verify_batch (messages/s per core)\n")
    print(table(results, "verify_batch", [], per_iteration=per_batch))
    for group in ["seal", "open"]:
        if any(g == group for (g, _, _) in results):
            print(f"\n### {group} (ops/s per core)\n")
            print(table(results, group, []))

    svg_plot(results, args.svg)
    print(f"\nwrote {args.svg}", file=sys.stderr)


if __name__ == "__main__":
    main()
