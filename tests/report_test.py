#!/usr/bin/env python3
"""eplb replay --report, rendered in a real headless browser (Chromium).

The page must draw every chart without a script error (its script sets
data-rendered="ok" on <body> at the end; the browser's console must show no
uncaught error), and text from outside (here a trace path full of HTML)
must appear as text, never run. A copy of the page with a broken script must
be caught by the same check (the check is not vacuous).

Usage: report_test.py EPLB CHROMIUM TRACE_CSV WORK_DIR
Stdlib only; exits 1 on any failure."""
import os
import shutil
import subprocess
import sys

failures = []


def check(name, ok, detail=""):
    print(("ok   " if ok else "FAIL ") + name + (f" ({detail})" if detail else ""))
    if not ok:
        failures.append(name)


def render(chromium, page, work):
    """The DOM after the page's scripts ran, and the browser's log."""
    profile = os.path.join(work, "profile")
    shutil.rmtree(profile, ignore_errors=True)
    out = subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync",
         f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0",
         "--virtual-time-budget=5000", "--dump-dom", "file://" + page],
        capture_output=True, text=True, timeout=120)
    return out.stdout, out.stderr


def script_errors(log):
    return [l for l in log.splitlines()
            if "CONSOLE" in l and ("Uncaught" in l or "Error" in l)]


def main():
    eplb, chromium, trace, work = sys.argv[1:5]
    shutil.rmtree(work, ignore_errors=True)
    hostile_dir = os.path.join(work, 'a<b>&"c')
    os.makedirs(hostile_dir)
    hostile = os.path.join(
        hostile_dir, "x<script>document.body.dataset.pwned=1</script><!--.csv"
        .replace("/", "_"))
    shutil.copy(trace, hostile)
    page = os.path.join(work, "report.html")
    r = subprocess.run([eplb, "replay", "--trace", hostile, "--ranks", "8",
                        "--redundant", "8", "--batch-steps", "16", "--no-pace",
                        "--report", page], capture_output=True, text=True,
                       timeout=600)
    check("replay --report exits 0", r.returncode == 0, r.stderr[-300:])
    html = open(page, encoding="utf-8").read()
    check("no raw '<script>' from the trace name in the page",
          "<script>document.body" not in html)
    dom, log = render(chromium, page, work)
    check("the page rendered (data-rendered=\"ok\")", 'data-rendered="ok"' in dom,
          dom[:200])
    check("no script error in the console", not script_errors(log),
          "; ".join(script_errors(log))[:300])
    check("the hostile name did not run", "data-pwned" not in dom)
    check("the hostile name is shown as text",
          "&lt;script&gt;document.body.dataset.pwned=1" in dom)
    for heading in ("Realized imbalance per step", "Rank load per layer",
                    "Experts and bytes moved per rebalance",
                    "Plan time against its budget"):
        check(f"section '{heading}'", heading in dom)
    check("charts drawn (svg polylines and heatmap cells)",
          dom.count("<polyline") >= 3 and dom.count("<rect") > 8 * 26)
    check("axes labelled", "replay step" in dom and "max / mean" in dom
          and ">rank<" in dom and ">layer<" in dom)

    # The same check on a broken page must fail.
    broken = os.path.join(work, "broken.html")
    with open(broken, "w", encoding="utf-8") as f:
        f.write(html.replace("document.body.dataset.rendered = 'ok';",
                             "notAFunction(); document.body.dataset.rendered = 'ok';"))
    dom, log = render(chromium, broken, work)
    check("a broken script is caught", 'data-rendered="ok"' not in dom
          and bool(script_errors(log)), "; ".join(script_errors(log))[:200])
    print(f"{len(failures)} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
