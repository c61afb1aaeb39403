"""The source lines (or SASS instructions) a kernel stalls on most, from
`ncu --import R --page source --csv --print-source cuda|sass`: warp-stall samples per line with
the leading stall reasons.
    python3 bench/gpu/ncu_source.py FILE.csv [N]"""
import csv
import sys

path, top = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 40
rows = list(csv.reader(l for l in open(path, errors="replace") if l.strip()))
head = next((i for i, r in enumerate(rows) if any("Warp Stall Sampling (All" in c for c in r)), None)
if head is None:
    sys.exit(f"{path}: no warp stall sampling columns")
cols, rows = rows[head], rows[head + 1:]
num = lambda v: float(v.replace(",", "")) if v.replace(",", "").replace(".", "", 1).isdigit() else 0.0
allc = next(i for i, c in enumerate(cols) if "Warp Stall Sampling (All" in c)
srcc = next((i for i, c in enumerate(cols) if c in ("Source", "Sass")), 1)
linec = next((i for i, c in enumerate(cols) if c in ("#", "Line", "# Address", "Address")), 0)
stalls = [i for i, c in enumerate(cols) if c.startswith("stall_") or ("Stall" in c and "Sampling" not in c)]
total = sum(num(r[allc]) for r in rows if len(r) > allc) or 1.0
print(f"== {path}: {total:.0f} warp-stall samples; top {top} lines")
ranked = sorted((r for r in rows if len(r) > allc), key=lambda r: -num(r[allc]))[:top]
for r in ranked:
    why = sorted(((num(r[i]), cols[i]) for i in stalls if i < len(r)), reverse=True)[:3]
    why = ", ".join(f"{c.replace('stall_', '')} {v:.0f}" for v, c in why if v > 0)
    print(f"{100 * num(r[allc]) / total:5.1f}%  {r[linec]:>6}  {r[srcc].strip()[:90]:90}  {why}")
