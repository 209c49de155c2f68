#!/usr/bin/env python3
"""eplb replay's metrics: --metrics-file passes `promtool check metrics`, and
--metrics-port answers GET /metrics while the replay runs (scraped during
the run, the text passes promtool too and its step counter grows); bad
metrics flags fail at once with one line naming the flag.

Usage: metrics_test.py EPLB PROMTOOL WORK_DIR
Stdlib only; exits 1 on any failure."""
import os
import socket
import subprocess
import sys
import time
import urllib.request

failures = []


def check(name, ok, detail=""):
    print(("ok   " if ok else "FAIL ") + name + (f" ({detail})" if detail else ""))
    if not ok:
        failures.append(name)


def promtool(promtool_bin, text):
    out = subprocess.run([promtool_bin, "check", "metrics"], input=text,
                         capture_output=True, text=True)
    return out.returncode == 0, (out.stdout + out.stderr).strip()


def steps_of(text):
    for line in text.splitlines():
        if line.startswith("eplb_steps_total "):
            return float(line.split()[1])
    return -1


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    eplb, promtool_bin, work = sys.argv[1:4]
    os.makedirs(work, exist_ok=True)
    base = [eplb, "replay", "--ranks", "4", "--redundant", "4"]

    # The final exposition in a file.
    path = os.path.join(work, "final.prom")
    r = subprocess.run(base + ["--no-pace", "--metrics-file", path, "--metrics-heat"],
                       capture_output=True, text=True, timeout=600)
    check("replay with --metrics-file exits 0", r.returncode == 0, r.stderr[-300:])
    text = open(path).read()
    ok, msg = promtool(promtool_bin, text)
    check("promtool check metrics accepts the file", ok, msg)
    for family in ("eplb_rebalances_total", "eplb_plan_duration_seconds_bucket",
                   "eplb_expert_load_balance_ratio", "eplb_moved_bytes_total",
                   "eplb_ttft_p99_seconds", "eplb_tpot_avg_seconds",
                   "eplb_device_utilization_ratio", "eplb_expert_heat_tokens"):
        check(f"has {family}", family in text)

    # The endpoint, scraped while a paced replay runs.
    port = free_port()
    proc = subprocess.Popen(base + ["--metrics-port", str(port), "--metrics-host",
                                    "127.0.0.1", "--batch-steps", "2"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    scrapes = []
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics",
                                        timeout=5) as resp:
                body = resp.read().decode()
                ctype = resp.headers.get("Content-Type", "")
            if body:
                scrapes.append((body, ctype))
        except OSError:
            pass
        time.sleep(0.2)
    running = proc.poll() is None
    proc.wait(timeout=600)
    check("the endpoint answered while the replay ran", len(scrapes) >= 2,
          f"{len(scrapes)} scrapes, still running at the end: {running}")
    if scrapes:
        ok, msg = promtool(promtool_bin, scrapes[-1][0])
        check("promtool check metrics accepts a scrape", ok, msg)
        check("text/plain; version=0.0.4", "version=0.0.4" in scrapes[-1][1],
              scrapes[-1][1])
        steps = [steps_of(b) for b, _ in scrapes]
        check("eplb_steps_total grows between scrapes",
              steps == sorted(steps) and steps[-1] > steps[0], str(steps[:5]))
    check("the replay exits 0", proc.returncode == 0, proc.stderr.read()[-300:])

    # Bad flags: one line, exit 1, before any work.
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        for args, want in (
                (["--metrics-port", "70000"], "--metrics-port 70000"),
                (["--metrics-port", str(taken), "--metrics-host", "127.0.0.1"],
                 "--metrics-port"),
                (["--metrics-file", os.path.join(work, "no", "dir", "m.prom")],
                 "--metrics-file")):
            start = time.monotonic()
            r = subprocess.run(base + args, capture_output=True, text=True, timeout=60)
            lines = r.stderr.strip().splitlines()
            check(f"{' '.join(args)} fails with one line naming it",
                  r.returncode == 1 and len(lines) == 1 and want in lines[0],
                  r.stderr.strip())
            check(f"{' '.join(args)} fails at once", time.monotonic() - start < 5)
    print(f"{len(failures)} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
