#!/usr/bin/env python3
"""The bad-input battery: hostile and mistaken inputs to every command and
file kind of the eplb command line (maps, configs, trace CSVs, SGLang dumps,
DeepSeek triples, flags of every subcommand, the environment guards).

Each case writes its input files into a fresh directory, runs one command
under a memory limit (RLIMIT_AS) and a time limit, and checks that it exits
non-zero (not by a signal) with one line on stderr that names what is wrong
(the field and the value), and that outputs named on the command line were
neither half-written nor damaged: each is created beforehand with known
content and must be unchanged, with no temp file left beside it. A few cases
check what must be accepted (a byte order mark, --groups that does not
divide the experts) and shapes that once ran for minutes. Then a crash test:
a recording replay killed with SIGKILL at seeded random moments leaves the
old map or a whole, valid new one, and the next write removes the temp
files the killed writer left; and the recorded map is the placement served
after the last commit.

Usage: bad_input_test.py EPLB DATA_DIR WORK_DIR"""
import json
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import time

EPLB, DATA, WORK = (os.path.abspath(a) for a in sys.argv[1:4])
MEMORY_LIMIT = 1 << 30  # RLIMIT_AS of every run: 1 GiB.
TIME_LIMIT = 10  # Seconds per run.
ORIGINAL = b"original content: must survive a failed run\n"


def limit_memory():
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


# --- Inputs -----------------------------------------------------------------

HEADER = "step,layer,expert,count\n"


def small_trace():
    """4 steps x 2 layers x 4 experts."""
    rows = [HEADER]
    for s in range(4):
        for l in range(2):
            for e in range(4):
                rows.append(f"{s},{l},{e},{(s + 1) * (e + 1) + l}\n")
    return "".join(rows)


def vllm_map(layers=2, ranks=2, slots=2, experts=4, devices=None):
    """A valid map (experts in order); `devices` overrides the device lists."""
    layer_list = []
    for l in range(layers):
        dl = devices if devices is not None else [
            {"device_id": r,
             "device_expert": [(r * slots + k) % experts for k in range(slots)]}
            for r in range(ranks)]
        layer_list.append({"layer_id": l, "device_count": len(dl), "device_list": dl})
    return json.dumps({"moe_layer_count": layers, "layer_list": layer_list})


def deep(n, opener="[", closer="]"):
    return opener * n + closer * n


def sglang_count(matrix):
    return json.dumps({"logical_count": matrix})


TRACE = small_trace()
COUNT = sglang_count([[1, 2, 3, 4], [4, 3, 2, 1]])
MAP = vllm_map()
DEEP = deep(200000)
DEEP_OBJ = '{"a":' * 100000 + "1" + "}" * 100000
BOM = "\ufeff"
PHY = {"phy2log": [[0, 1, 2, 3], [3, 2, 1, 0]]}
CFG_DYN = {"dynamic_eplb": True, "num_redundant_experts": 0}
# vllm-ascend map of a million null layers (5 MB).
NULL_LAYERS = ('{"moe_layer_count": 1000000, "layer_list": [' +
               ",".join(["null"] * 1000000) + "]}")
NULL_LAYERS_SMALL = ('{"moe_layer_count": 4000, "layer_list": [' +
                     ",".join(["null"] * 4000) + "]}")


def cfg(**keys):
    return json.dumps(dict(CFG_DYN, **keys))


DYN = {"DYNAMIC_EPLB": "true"}

# --- Cases ------------------------------------------------------------------
# Each: name, argv (after `eplb`), files {name: text}, and optional:
#   want: substrings stderr must hold (the field and the value),
#   outs: outputs to pre-create and check unchanged,
#   env: extra environment, lines: the most stderr lines allowed (1).

CASES = []


def case(name, argv, files=None, want=(), outs=(), env=None, lines=1):
    CASES.append(dict(name=name, argv=argv, files=files or {}, want=list(want),
                      outs=list(outs), env=env or {}, lines=lines))


PLAN = ["plan", "--ranks", "2", "--slots-per-rank", "2"]
INSPECT = ["inspect", "--ranks", "2", "--slots-per-rank", "2"]
REPLAY = ["replay", "--trace", "t.csv", "--ranks", "2", "--redundant", "0",
          "--no-pace"]

# Trace CSV: sizes by the largest id, numbers, structure.
for cmd in ("plan", "inspect", "replay", "convert"):
    argv = {"plan": PLAN + ["--load", "t.csv"],
            "inspect": INSPECT + ["--load", "t.csv"],
            "replay": REPLAY,
            "convert": ["convert", "--in", "t.csv", "--to", "sglang-count",
                        "--out", "o.json"]}[cmd]
    outs = ["o.json"] if cmd == "convert" else []
    case(f"csv step 268435455 ({cmd})", argv,
         {"t.csv": HEADER + "268435455,0,0,1\n"},
         want=["t.csv", "step", "268435455", "limit"], outs=outs)
    case(f"csv expert 99999999 ({cmd})", argv,
         {"t.csv": HEADER + "0,0,99999999,1\n"},
         want=["t.csv", "expert", "99999999", "limit"], outs=outs)
case("csv layer 5000000", PLAN + ["--load", "t.csv"],
     {"t.csv": HEADER + "0,5000000,0,1\n"}, want=["layer", "5000000", "limit"])
case("csv cells over the limit", PLAN + ["--load", "t.csv"],
     {"t.csv": HEADER + "0,0,0,1\n1048575,4000,60000,1\n"},
     want=["t.csv", "cells", "limit"])
case("csv count 2^64-1 (inspect)", INSPECT + ["--load", "t.csv"],
     {"t.csv": HEADER + "0,0,0,18446744073709551615\n"},
     want=["count", "18446744073709551615", "limit"])
case("csv count 2^64-1 (convert)",
     ["convert", "--in", "t.csv", "--to", "sglang-count", "--out", "o.json"],
     {"t.csv": HEADER + "0,0,0,18446744073709551615\n"},
     want=["count", "18446744073709551615"], outs=["o.json"])
case("csv count 2^64", INSPECT + ["--load", "t.csv"],
     {"t.csv": HEADER + "0,0,0,18446744073709551616\n"},
     want=["count", "18446744073709551616"])
case("csv count 2^53+1", INSPECT + ["--load", "t.csv"],
     {"t.csv": HEADER + "0,0,0,9007199254740993\n"},
     want=["count", "9007199254740993", "limit"])
case("csv id with 30 digits", INSPECT + ["--load", "t.csv"],
     {"t.csv": HEADER + "0,0,999999999999999999999999999999,1\n"},
     want=["expert", "999999999999999999999999999999"])
case("csv negative count", INSPECT + ["--load", "t.csv"],
     {"t.csv": HEADER + "0,0,0,-1\n"}, want=["count", "-1"])
case("csv fractional count", INSPECT + ["--load", "t.csv"],
     {"t.csv": HEADER + "0,0,0,2.5\n"}, want=["count", "2.5"])
case("csv nan count", INSPECT + ["--load", "t.csv"],
     {"t.csv": HEADER + "0,0,0,nan\n"}, want=["count", "nan"])
case("csv wrong header", INSPECT + ["--load", "t.csv"],
     {"t.csv": "step,layer,expert,tokens\n0,0,0,1\n"}, want=["header", "tokens"])
case("csv BOM then wrong header", INSPECT + ["--load", "t.csv"],
     {"t.csv": BOM + "stp,layer,expert,count\n0,0,0,1\n"}, want=["header", "stp"])
case("csv three columns", INSPECT + ["--load", "t.csv"],
     {"t.csv": HEADER + "0,0,1\n"}, want=["line 2", "3 columns"])
case("csv five columns", INSPECT + ["--load", "t.csv"],
     {"t.csv": HEADER + "0,0,1,1,1\n"}, want=["line 2", "5 columns"])
case("csv letters", INSPECT + ["--load", "t.csv"],
     {"t.csv": HEADER + "0,zero,1,1\n"}, want=["layer", "zero"])
case("csv steps descending", INSPECT + ["--load", "t.csv"],
     {"t.csv": HEADER + "3,0,0,1\n1,0,0,1\n"}, want=["line 3", "step 1"])
case("csv duplicate cell", INSPECT + ["--load", "t.csv"],
     {"t.csv": HEADER + "0,0,0,1\n0,0,0,2\n"}, want=["line 3", "twice"])
case("csv header only", INSPECT + ["--load", "t.csv"], {"t.csv": HEADER},
     want=["t.csv", "no rows"])
case("csv empty file", INSPECT + ["--load", "t.csv"], {"t.csv": ""},
     want=["t.csv", "empty"])
case("csv blank line inside", INSPECT + ["--load", "t.csv"],
     {"t.csv": HEADER + "0,0,0,1\n\n1,0,0,1\n"}, want=["line 3", "empty line"])
case("csv NUL bytes", INSPECT + ["--load", "t.csv"],
     {"t.csv": HEADER + "0,0,\0,1\n"}, want=["line 2", "expert"])
case("csv line over 1 MiB", INSPECT + ["--load", "t.csv"],
     {"t.csv": HEADER + "0,0,0," + "1" * (1 << 21) + "\n"}, want=["line 2"])
case("csv binary garbage", INSPECT + ["--load", "t.csv"],
     {"t.csv": "\x01\x02\x03garbage\xff\n"}, want=["t.csv", "header"])
case("csv PyTorch zip", INSPECT + ["--load", "t.csv"],
     {"t.csv": "PK\x03\x04" + "x" * 40}, want=["t.csv", "PyTorch"])
case("load /dev/urandom", INSPECT + ["--load", "/dev/urandom"], {},
     want=["/dev/urandom", "header"])
case("map /dev/zero", ["validate-map", "/dev/zero"], {}, want=["/dev/zero", "limit"])
case("config /dev/zero", ["replay", "--config", "/dev/zero"], {},
     want=["/dev/zero", "limit"])
case("load missing", INSPECT + ["--load", "missing.csv"], {},
     want=["missing.csv", "no such file"])
case("load is a directory", INSPECT + ["--load", "adir"], {"adir/": None},
     want=["adir", "directory"])

# SGLang logical_count dumps.
case("sglang deep nesting (inspect)", INSPECT + ["--load", "c.json"],
     {"c.json": '{"logical_count": ' + DEEP + "}"}, want=["c.json", "nested", "64"])
case("sglang deep nesting (convert)",
     ["convert", "--in", "c.json", "--to", "trace-csv", "--out", "o.csv"],
     {"c.json": '{"logical_count": ' + DEEP + "}"}, want=["nested"], outs=["o.csv"])
case("sglang deep nesting (replay)",
     ["replay", "--trace", "c.json", "--ranks", "2", "--redundant", "0"],
     {"c.json": '{"logical_count": ' + deep(1000000) + "}"}, want=["nested"])
case("sglang count 1e308 (sum overflows)", INSPECT + ["--load", "c.json"],
     {"c.json": sglang_count([[1e308, 1e308, 1e308, 1e308]])},
     want=["logical_count[0][0]", "1e+308", "limit"])
case("sglang negative count", INSPECT + ["--load", "c.json"],
     {"c.json": sglang_count([[1, -2, 3, 4]])}, want=["logical_count[0][1]", "-2"])
case("sglang string count", INSPECT + ["--load", "c.json"],
     {"c.json": sglang_count([[1, "x", 3, 4]])}, want=["logical_count[0][1]", '"x"'])
case("sglang NaN", INSPECT + ["--load", "c.json"],
     {"c.json": '{"logical_count": [[1, NaN, 3, 4]]}'}, want=["c.json", "JSON"])
case("sglang ragged rows", INSPECT + ["--load", "c.json"],
     {"c.json": sglang_count([[1, 2, 3, 4], [1, 2]])}, want=["logical_count[1]", "2 values"])
case("sglang all zero", INSPECT + ["--load", "c.json"],
     {"c.json": sglang_count([[0, 0], [0, 0]])}, want=["c.json", "zero"])
case("sglang missing key", INSPECT + ["--load", "c.json"],
     {"c.json": '{"counts": [[1, 2]]}'}, want=["c.json", "logical_count"])
case("sglang logical_count not an array", INSPECT + ["--load", "c.json"],
     {"c.json": '{"logical_count": 7}'}, want=["c.json", "logical_count"])
case("sglang truncated", INSPECT + ["--load", "c.json"],
     {"c.json": '{"logical_count": [[1, 2, 3'}, want=["c.json", "JSON"])
case("sglang 5000 layers", INSPECT + ["--load", "c.json"],
     {"c.json": sglang_count([[1]] * 5000)}, want=["5000 layers", "limit"])
case("sglang 70000 experts", INSPECT + ["--load", "c.json"],
     {"c.json": sglang_count([[1] * 70000])}, want=["70000 experts", "limit"])
case("sglang BOM then garbage", INSPECT + ["--load", "c.json"],
     {"c.json": BOM + '{"logical_count": [[1, 2],'}, want=["c.json", "JSON"])

# DeepSeek triples.
DS = ["validate-map", "d.json", "--from", "deepseek", "--ranks", "2"]
case("deepseek deep nesting", DS, {"d.json": '{"phy2log": ' + DEEP + "}"},
     want=["d.json", "nested"])
case("deepseek deep objects", DS, {"d.json": DEEP_OBJ}, want=["d.json", "nested"])
case("deepseek missing phy2log", DS, {"d.json": '{"log2phy": []}'},
     want=["d.json", "phy2log"])
case("deepseek not an object", DS, {"d.json": "[1, 2]"}, want=["d.json", "object"])
case("deepseek id 99999999", DS,
     {"d.json": json.dumps({"phy2log": [[0, 1, 2, 99999999]]})},
     want=["d.json", "99999999"])
case("deepseek negative id", DS,
     {"d.json": json.dumps({"phy2log": [[0, 1, -2, 3]]})}, want=["d.json", "-2"])
case("deepseek row not divisible by ranks", DS,
     {"d.json": json.dumps({"phy2log": [[0, 1, 2]]})}, want=["d.json", "3"])
case("deepseek 5000 layers", DS,
     {"d.json": '{"phy2log": [' + ",".join(["[0, 1]"] * 5000) + "]}"},
     want=["d.json", "5000 rows", "limit"])
case("deepseek logcnt disagrees", DS,
     {"d.json": json.dumps(dict(PHY, logcnt=[[1, 1, 1, 2], [1, 1, 1, 1]]))},
     want=["d.json", "logcnt"])
case("deepseek log2phy disagrees", DS,
     {"d.json": json.dumps(dict(PHY, log2phy=[[[1], [0], [2], [3]],
                                               [[3], [2], [1], [0]]]))},
     want=["d.json", "log2phy"])
case("deepseek convert deep", ["convert", "--in", "d.json", "--from", "deepseek",
                               "--ranks", "2", "--to", "vllm-map", "--out", "o.json"],
     {"d.json": '{"phy2log": ' + DEEP + "}"}, want=["nested"], outs=["o.json"])

# SGLang physical_to_logical_map.
SM = ["validate-map", "m.json", "--from", "sglang-map", "--ranks", "2"]
case("sglang-map deep nesting", SM,
     {"m.json": '{"physical_to_logical_map": ' + DEEP + "}"}, want=["m.json", "nested"])
case("sglang-map without --ranks", ["validate-map", "m.json", "--from", "sglang-map"],
     {"m.json": '{"physical_to_logical_map": [[0, 1]]}'}, want=["--ranks"])
case("sglang-map row of 1100000 slots", SM,
     {"m.json": '{"physical_to_logical_map": [[' + ",".join(["0"] * 1100000) + "]]}"},
     want=["m.json", "1100000 slots", "limit"])
case("sglang-map float id", SM,
     {"m.json": '{"physical_to_logical_map": [[0, 1.5, 2, 3]]}'}, want=["m.json", "1.5"])

# vllm-ascend maps.
VM = ["validate-map", "m.json"]
case("map deep nesting (validate-map)", VM, {"m.json": DEEP}, want=["m.json", "nested"])
case("map deep nesting in layer_list", VM,
     {"m.json": '{"moe_layer_count": 1, "layer_list": ' + deep(500000) + "}"},
     want=["m.json", "nested"])
case("map deep nesting (inspect --map)",
     INSPECT + ["--load", "t.csv", "--map", "m.json"],
     {"t.csv": TRACE, "m.json": DEEP}, want=["m.json", "nested"])
case("map deep nesting (plan --current)",
     PLAN + ["--load", "t.csv", "--current", "m.json", "--out", "o.json"],
     {"t.csv": TRACE, "m.json": DEEP}, want=["m.json", "nested"], outs=["o.json"])
case("map deep nesting (convert, detected)",
     ["convert", "--in", "m.json", "--to", "sglang-map", "--out", "o.json"],
     {"m.json": DEEP}, want=["m.json"], outs=["o.json"])
case("map a million null layers", VM, {"m.json": NULL_LAYERS},
     want=["m.json", "1000000 layers", "limit"])
case("map 4000 null layers (capped output)", VM, {"m.json": NULL_LAYERS_SMALL},
     want=["m.json", "layer_list[0]", "more problems"], lines=21)
case("map layer count mismatch", VM,
     {"m.json": vllm_map().replace('"moe_layer_count": 2', '"moe_layer_count": 3')},
     want=["moe_layer_count", "3"])
case("map expert 99999999", VM,
     {"m.json": vllm_map(devices=[{"device_id": 0, "device_expert": [0, 1]},
                                  {"device_id": 1, "device_expert": [2, 99999999]}])},
     want=["m.json", "99999999"], lines=4)
case("map expert twice on a device", VM,
     {"m.json": vllm_map(devices=[{"device_id": 0, "device_expert": [0, 0]},
                                  {"device_id": 1, "device_expert": [1, 2]}])},
     want=["m.json", "twice"], lines=4)
case("map device_count wrong", VM,
     {"m.json": vllm_map().replace('"device_count": 2', '"device_count": 7', 1)},
     want=["device_count", "7"])
case("map 5000 devices", VM,
     {"m.json": vllm_map(layers=1, devices=[{"device_id": r, "device_expert": [0]}
                                            for r in range(5000)])},
     want=["5000 devices", "limit"])
case("map layer_list empty", VM, {"m.json": '{"moe_layer_count": 0, "layer_list": []}'},
     want=["layer_list", "empty"], lines=2)
case("map layer_list a string", VM, {"m.json": '{"moe_layer_count": 1, "layer_list": "x"}'},
     want=["layer_list", '"x"'], lines=2)
case("map top level array", VM, {"m.json": "[]"}, want=["m.json", "array"])
case("map bool expert id", VM,
     {"m.json": vllm_map(layers=1, devices=[{"device_id": 0, "device_expert": [True, 1]},
                                            {"device_id": 1, "device_expert": [2, 3]}])},
     want=["m.json", "true"], lines=3)
case("map truncated", VM, {"m.json": MAP[:40]}, want=["m.json", "JSON"])
case("map empty file", VM, {"m.json": ""}, want=["m.json", "empty"])
case("map PyTorch pickle", VM, {"m.json": b"\x80\x02" + b"x" * 40}, want=["m.json", "PyTorch"])
case("map of a load", VM, {"m.json": TRACE}, want=["m.json", "load"])
case("map wrong shape for inspect", INSPECT + ["--load", "t.csv", "--map", "m.json"],
     {"t.csv": TRACE, "m.json": vllm_map(ranks=4, slots=1)}, want=["m.json"])

# eplb_config.
RC = ["replay", "--trace", "t.csv", "--ranks", "2", "--no-pace", "--config", "c.json"]
case("config deep array value", RC,
     {"t.csv": TRACE, "c.json": '{"dynamic_eplb": ' + deep(1000000) + "}"},
     want=["c.json", "nested", "64"], env=DYN)
case("config deep object", RC, {"t.csv": TRACE, "c.json": DEEP_OBJ},
     want=["c.json", "nested"], env=DYN)
case("config top level array", RC, {"t.csv": TRACE, "c.json": "[1]"},
     want=["c.json", "top level"], env=DYN)
case("config unknown key", RC, {"t.csv": TRACE, "c.json": cfg(frob=1)},
     want=["c.json", "frob"], env=DYN)
case("config dynamic without the guard", RC, {"t.csv": TRACE, "c.json": cfg()},
     want=["dynamic_eplb", "DYNAMIC_EPLB"])
case("env DYNAMIC_EPLB=yes", RC, {"t.csv": TRACE, "c.json": cfg()},
     want=["DYNAMIC_EPLB", "yes"], env={"DYNAMIC_EPLB": "yes"})
case("env EXPERT_MAP_RECORD=2", RC,
     {"t.csv": TRACE, "c.json": cfg(expert_map_record_path="r.json")},
     want=["EXPERT_MAP_RECORD", "2"], env={"EXPERT_MAP_RECORD": "2"})
case("config redundant 2147483647", RC,
     {"t.csv": TRACE, "c.json": cfg(num_redundant_experts=2147483647)},
     want=["num_redundant_experts", "2147483647", "limit"], env=DYN)
case("config redundant 2^40", RC,
     {"t.csv": TRACE, "c.json": cfg(num_redundant_experts=1 << 40)},
     want=["num_redundant_experts", "1099511627776"], env=DYN)
case("config record path in a missing directory", RC,
     {"t.csv": TRACE, "c.json": cfg(expert_map_record_path="nodir/r.json")},
     want=["expert_map_record_path", "nodir/r.json", "does not exist"], env=DYN)
case("config record path is a directory", RC,
     {"t.csv": TRACE, "c.json": cfg(expert_map_record_path="d.json"), "d.json/": None},
     want=["expert_map_record_path", "d.json", "directory"], env=DYN)
case("config record path not .json", RC,
     {"t.csv": TRACE, "c.json": cfg(expert_map_record_path="r.txt")},
     want=["expert_map_record_path", "r.txt"], env=DYN)
case("config heat interval 0", RC,
     {"t.csv": TRACE, "c.json": cfg(expert_heat_collection_interval=0)},
     want=["expert_heat_collection_interval", "0"], env=DYN)
case("config heat interval 1.5", RC,
     {"t.csv": TRACE, "c.json": cfg(expert_heat_collection_interval=1.5)},
     want=["expert_heat_collection_interval", "1.5"], env=DYN)
case("config heat interval a string", RC,
     {"t.csv": TRACE, "c.json": cfg(expert_heat_collection_interval="8")},
     want=["expert_heat_collection_interval", '"8"'], env=DYN)
case("config migration budget 2", RC,
     {"t.csv": TRACE, "c.json": cfg(eplb_migration_budget=2)},
     want=["eplb_migration_budget", "2"], env=DYN)
case("config dispatch frob", RC, {"t.csv": TRACE, "c.json": cfg(eplb_dispatch="frob")},
     want=["eplb_dispatch", "frob"], env=DYN)
case("config planner threads 0", RC,
     {"t.csv": TRACE, "c.json": cfg(eplb_planner_threads=0)},
     want=["eplb_planner_threads", "0"], env=DYN)
case("config policy type 9", RC, {"t.csv": TRACE, "c.json": cfg(eplb_policy_type=9)},
     want=["eplb_policy_type", "9"], env=DYN)
case("config static map missing", RC,
     {"t.csv": TRACE, "c.json": json.dumps({"expert_map_path": "nomap.json"})},
     want=["expert_map_path", "nomap.json"])
case("config static map deep", RC,
     {"t.csv": TRACE, "c.json": json.dumps({"expert_map_path": "m.json"}), "m.json": DEEP},
     want=["expert_map_path", "nested"])
case("config BOM then garbage", RC, {"t.csv": TRACE, "c.json": BOM + "{,}"},
     want=["c.json", "JSON"], env=DYN)

# Flags: the command word and global flags.
case("unknown command", ["frob"], want=["frob", "unknown command"])
case("unknown global flag", ["--frob"], want=["--frob"])
case("no command", [], want=["subcommand"])
case("models with an argument", ["models", "--frob"], want=["--frob"])

# inspect and the topology flags.
INS = ["inspect", "--load", "t.csv"]
for flag, value, extra in [("--ranks", "0", ["--slots-per-rank", "2"]),
                           ("--ranks", "-1", ["--slots-per-rank", "2"]),
                           ("--ranks", "1000000", ["--slots-per-rank", "2"]),
                           ("--ranks", "abc", ["--slots-per-rank", "2"]),
                           ("--ranks", "2.5", ["--slots-per-rank", "2"]),
                           ("--slots-per-rank", "0", ["--ranks", "2"]),
                           ("--redundant", "2147483647", ["--ranks", "2"]),
                           ("--redundant", "-1", ["--ranks", "2"]),
                           ("--ranks-per-node", "0", ["--ranks", "2", "--redundant", "0"])]:
    case(f"inspect {flag} {value}", INS + extra + [flag, value], {"t.csv": TRACE},
         want=[flag, value])
case("inspect ranks-per-node not dividing",
     INS + ["--ranks", "2", "--redundant", "0", "--ranks-per-node", "3"], {"t.csv": TRACE},
     want=["ranks_per_node", "3"])
case("inspect redundant not dividing", INS + ["--ranks", "2", "--redundant", "1"],
     {"t.csv": TRACE}, want=["redundant", "1"])
case("inspect both slot flags",
     INS + ["--ranks", "2", "--redundant", "0", "--slots-per-rank", "2"], {"t.csv": TRACE},
     want=["--slots-per-rank", "--redundant"])
case("inspect neither slot flag", INS + ["--ranks", "2"], {"t.csv": TRACE},
     want=["--slots-per-rank", "--redundant"])
case("inspect more slots per rank than experts",
     INS + ["--ranks", "1", "--slots-per-rank", "9"], {"t.csv": TRACE},
     want=["slots_per_rank", "9"])

# plan.
PL = PLAN + ["--load", "t.csv"]
for flag, value in [("--policy", "frob"), ("--policy", "7"), ("--window", "-1"),
                    ("--window", "99999999999"), ("--seed", "-1"),
                    ("--seed", "18446744073709551616"), ("--migration-budget", "0"),
                    ("--migration-budget", "1.5"), ("--migration-budget", "nan"),
                    ("--dispatch", "frob"), ("--groups", "0"), ("--threads", "0"),
                    ("--threads", "257"), ("--threads", "two")]:
    case(f"plan {flag} {value}", PL + [flag, value, "--out", "o.json"], {"t.csv": TRACE},
         want=[flag if flag != "--policy" else "policy", value], outs=["o.json"])
case("plan --out empty", PL + ["--out", ""], {"t.csv": TRACE}, want=["--out", '""'])
case("plan --out in a missing directory", PL + ["--out", "nodir/o.json"],
     {"t.csv": TRACE}, want=["--out", "nodir"])
case("plan --out is a directory", PL + ["--out", "odir"], {"t.csv": TRACE, "odir/": None},
     want=["--out", "odir", "directory"])
case("plan bad load keeps --out", PL + ["--out", "o.json"],
     {"t.csv": HEADER + "0,0,0,x\n"}, want=["t.csv", "count"], outs=["o.json"])
case("plan --current of another shape",
     PL + ["--current", "m.json", "--out", "o.json"],
     {"t.csv": TRACE, "m.json": vllm_map(layers=3)}, want=["m.json", "3"], outs=["o.json"])

# replay.
RP = ["replay", "--trace", "t.csv", "--no-pace"]
for flag, value in [("--ranks", "1000000"), ("--ranks", "0"), ("--redundant", "2147483647"),
                    ("--redundant", "-5"), ("--heat-interval", "0"),
                    ("--algo-interval", "-1"), ("--batch-steps", "0"),
                    ("--dispatch", "frob"), ("--steady-from", "-1"),
                    ("--transport", "tcp"), ("--rank-timeout-ms", "0"),
                    ("--corrupt-every", "-1"), ("--metrics-port", "70000"),
                    ("--model", "frob"), ("--quant", "fp3"), ("--hardware", "tpu"),
                    ("--policy", "frob"), ("--ranks-per-node", "3"),
                    ("--fail-rank", "-2"), ("--fail-at-step", "-7"),
                    ("--metrics-host", ""),
                    ("--batch-steps", "99999999999")]:
    shape = [] if flag in ("--ranks", "--redundant") else ["--ranks", "2", "--redundant", "0"]
    case(f"replay {flag} {value}", RP + shape + [flag, value], {"t.csv": TRACE},
         want=[{"--policy": "policy", "--ranks-per-node": "ranks_per_node"}.get(flag, flag),
               value])
case("replay --fail-rank 0", RP + ["--ranks", "2", "--redundant", "0", "--fail-rank", "0",
                                   "--fail-at-step", "1"], {"t.csv": TRACE},
     want=["fail rank 0"])
case("replay --forge-checksums alone", RP + ["--forge-checksums"], {"t.csv": TRACE},
     want=["--forge-checksums"])
for flag in ("--report", "--placement-log", "--rank-load-log", "--metrics-file"):
    case(f"replay {flag} empty", RP + [flag, ""], {"t.csv": TRACE}, want=[flag, '""'])
    case(f"replay {flag} in a missing directory", RP + [flag, "nodir/x"],
         {"t.csv": TRACE}, want=[flag, "nodir"])
case("replay --report is a directory", RP + ["--report", "rdir"],
     {"t.csv": TRACE, "rdir/": None}, want=["--report", "rdir", "directory"])
case("replay trace missing", ["replay", "--trace", "none.csv"], {},
     want=["none.csv", "no such file"])

# convert.
CV = ["convert", "--in", "m.json", "--out", "o.json"]
case("convert --to frob", CV + ["--to", "frob"], {"m.json": MAP}, want=["--to", "frob"],
     outs=["o.json"])
case("convert --from frob", CV + ["--to", "vllm-map", "--from", "frob"], {"m.json": MAP},
     want=["--from", "frob"], outs=["o.json"])
case("convert map to a load format", CV + ["--to", "trace-csv"], {"m.json": MAP},
     want=["trace-csv"], outs=["o.json"])
case("convert --out empty", ["convert", "--in", "m.json", "--out", "", "--to", "sglang-map"],
     {"m.json": MAP}, want=["--out", '""'])
case("convert --out is a directory",
     ["convert", "--in", "m.json", "--out", "odir", "--to", "sglang-map"],
     {"m.json": MAP, "odir/": None}, want=["--out", "odir"])
case("convert sglang-map without --ranks", CV + ["--to", "vllm-map", "--from", "sglang-map"],
     {"m.json": '{"physical_to_logical_map": [[0, 1]]}'}, want=["--ranks"], outs=["o.json"])
case("convert --repair on a load",
     ["convert", "--in", "t.csv", "--out", "o.json", "--to", "sglang-count", "--repair"],
     {"t.csv": TRACE}, want=["--repair"], outs=["o.json"])
case("convert --model frob", CV + ["--to", "sglang-map", "--model", "frob"],
     {"m.json": MAP}, want=["frob"], outs=["o.json"])
case("convert --num-hidden-layers 0", CV + ["--to", "sglang-map", "--num-hidden-layers", "0"],
     {"m.json": MAP}, want=["--num-hidden-layers", "0"], outs=["o.json"])
case("convert unknown format", CV + ["--to", "vllm-map"], {"m.json": '{"x": 1}'},
     want=["m.json", "format"], outs=["o.json"])
case("convert --in missing", ["convert", "--in", "none.json", "--out", "o.json", "--to",
                              "vllm-map"], {}, want=["none.json"], outs=["o.json"])

# validate-map flags.
case("validate-map --target frob", VM + ["--target", "frob"], {"m.json": MAP},
     want=["--target", "frob"])
case("validate-map --experts 0", VM + ["--experts", "0"], {"m.json": MAP},
     want=["--experts", "0"])
case("validate-map --layers 99999", VM + ["--layers", "99999"], {"m.json": MAP},
     want=["--layers", "99999"])
case("validate-map --from trace-csv", VM + ["--from", "trace-csv"], {"m.json": MAP},
     want=["m.json", "load"])
case("validate-map missing file", ["validate-map", "none.json"], {},
     want=["none.json", "no such file"])


# --- Running ----------------------------------------------------------------

def make_files(d, files):
    for name, text in files.items():
        path = os.path.join(d, name)
        if name.endswith("/"):
            os.makedirs(path, exist_ok=True)
            continue
        with open(path, "wb") as f:
            f.write(text.encode("utf-8", "surrogateescape")
                    if isinstance(text, str) else text)


def run(argv, cwd, env=None, timeout=TIME_LIMIT):
    start = time.monotonic()
    proc = subprocess.run([EPLB] + argv, cwd=cwd, env=dict(os.environ, **(env or {})),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          timeout=timeout, preexec_fn=limit_memory)
    return proc, time.monotonic() - start


def check_case(c, index):
    d = os.path.join(WORK, f"case{index:03d}")
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    make_files(d, c["files"])
    for out in c["outs"]:
        with open(os.path.join(d, out), "wb") as f:
            f.write(ORIGINAL)
    env = {"DYNAMIC_EPLB": "", "EXPERT_MAP_RECORD": ""}
    env.update(c["env"])
    problems = []
    try:
        proc, _ = run(c["argv"], d, env)
    except subprocess.TimeoutExpired:
        return [f"did not finish within {TIME_LIMIT} s"]
    err = proc.stderr.decode("utf-8", "replace")
    lines = [l for l in err.split("\n") if l]
    if proc.returncode < 0:
        problems.append(f"killed by signal {-proc.returncode}")
    elif proc.returncode == 0:
        problems.append("exit 0")
    if not lines:
        problems.append("nothing on stderr")
    elif len(lines) > c["lines"]:
        problems.append(f"{len(lines)} lines on stderr (at most {c['lines']})")
    for w in c["want"]:
        if w not in err:
            problems.append(f"stderr does not name {w!r}")
    for bad in ("out of memory", "bad_alloc", "-nan", "Value ", "1797693134862"):
        if bad in err:
            problems.append(f"stderr holds {bad!r}")
    for out in c["outs"]:
        with open(os.path.join(d, out), "rb") as f:
            if f.read() != ORIGINAL:
                problems.append(f"{out} was changed")
    left = [f for f in os.listdir(d) if ".tmp" in f]
    if left:
        problems.append(f"temp files left: {left}")
    if problems:
        problems.append("stderr: " + err[:600].replace("\n", " | "))
    shutil.rmtree(d, ignore_errors=True)
    return problems


def accepted_checks():
    """What must work: a byte order mark, --groups that does not divide,
    large shapes in bounded time."""
    d = os.path.join(WORK, "accepted")
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    make_files(d, {"c.json": BOM + COUNT, "t.csv": BOM + TRACE})
    results = []
    for name in ("c.json", "t.csv"):
        proc, _ = run(INSPECT + ["--load", name, "--json"], d)
        ok = proc.returncode == 0 and json.loads(proc.stdout)["layers"] == 2
        results.append((f"a {name} starting with a byte order mark is read", ok, proc))
    make_files(d, {"m.json": BOM + MAP})
    proc, _ = run(["convert", "--in", "m.json", "--to", "sglang-map", "--out", "o.json"], d)
    results.append(("a map starting with a byte order mark is detected", proc.returncode == 0,
                    proc))
    proc, _ = run(["plan", "--load", "t.csv", "--ranks", "2", "--slots-per-rank", "2",
                   "--groups", "3", "--policy", "default", "--ranks-per-node", "1"], d)
    results.append(("--groups not dividing the experts falls back with a note",
                    proc.returncode == 0 and b"note" in proc.stderr, proc))
    sglang = os.path.join(DATA, "dsv3-sglang", "prefill_in512.json")
    for policy in ("flashlb", "best", "swift"):
        try:
            proc, secs = run(["plan", "--load", sglang, "--ranks", "1024",
                              "--slots-per-rank", "1", "--policy", policy, "--json"], d)
            ok = proc.returncode == 0
        except subprocess.TimeoutExpired:
            ok, proc, secs = False, None, TIME_LIMIT
        results.append((f"{policy} at 1024 ranks x 1 slot plans within {TIME_LIMIT} s "
                        f"({secs:.1f} s)", ok, proc))
    shutil.rmtree(d, ignore_errors=True)
    return results


def recording_checks():
    """The recorded map is the placement served after the last commit; a
    writer killed mid-run leaves the old map or a whole new one; stale temp
    files go on the next write."""
    d = os.path.join(WORK, "recording")
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    trace = os.path.join(DATA, "dsv2lite-puffin", "prefill_by_prompt.csv")
    rec = os.path.join(d, "rec.json")
    log = os.path.join(d, "log.jsonl")
    # The shipped trace at EP16 + 16 in lockstep: its last rebalance is
    # still migrating when the trace ends (7 rebalances), which once left
    # the recorded map a rebalance behind the placement served.
    make_files(d, {"c.json": json.dumps({
        "expert_map_record_path": rec, "num_redundant_experts": 16,
        "expert_heat_collection_interval": 8, "algorithm_execution_interval": 1})})
    argv = ["replay", "--trace", trace, "--ranks", "16", "--batch-steps", "16",
            "--config", "c.json", "--placement-log", log, "--json", "--no-pace"]
    env = {"EXPERT_MAP_RECORD": "true", "DYNAMIC_EPLB": ""}
    results = []
    proc, _ = run(argv, d, env, timeout=60)
    out = json.loads(proc.stdout) if proc.returncode == 0 else {}
    results.append(("recording replay runs", proc.returncode == 0, proc))
    results.append((f"a map written per rebalance ({out.get('maps_written')} maps, "
                    f"{out.get('rebalances')} rebalances)",
                    out.get("rebalances", 0) > 0 and
                    out.get("maps_written") == out.get("rebalances"), proc))
    served = {}
    for line in open(log):
        entry = json.loads(line)
        served[entry["layer"]] = entry["placement"]
    recorded = json.load(open(rec))
    same = all(
        [dv["device_expert"] for dv in sorted(layer["device_list"],
                                               key=lambda x: x["device_id"])]
        == served[layer["layer_id"]] for layer in recorded["layer_list"])
    results.append(("the recorded map is the last placement served", same, proc))

    # SIGKILL at seeded random moments.
    rng = random.Random(1234)
    with open(rec, "rb") as f:
        previous = f.read()
    whole = True
    for i in range(10):
        p = subprocess.Popen([EPLB] + argv, cwd=d, env=dict(os.environ, **env),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             preexec_fn=limit_memory)
        time.sleep(rng.uniform(0.05, 0.6))
        p.send_signal(signal.SIGKILL)
        p.wait()
        with open(rec, "rb") as f:
            now = f.read()
        if now != previous:
            v = subprocess.run([EPLB, "validate-map", rec, "--experts", "64", "--ranks", "16"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            if v.returncode != 0:
                whole = False
                print(f"kill {i}: map on disk is not valid: {v.stderr.decode()[:300]}")
        previous = now
    results.append(("after 10 SIGKILLs the map is the old one or a whole valid one",
                    whole, None))
    # A killed writer's temp file, full size, then one clean run.
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = f"{rec}.tmp.{dead.pid}.0"
    with open(stale, "wb") as f:
        f.write(previous)
    proc, _ = run(argv, d, env, timeout=60)
    left = [f for f in os.listdir(d) if ".tmp." in f]
    results.append((f"the next write removes stale temp files (left: {left})",
                    proc.returncode == 0 and not left, proc))
    shutil.rmtree(d, ignore_errors=True)
    return results


def main():
    os.makedirs(WORK, exist_ok=True)
    failures = 0
    for i, c in enumerate(CASES):
        problems = check_case(c, i)
        if problems:
            failures += 1
            print(f"FAIL {c['name']}: {'; '.join(problems)}")
    print(f"{len(CASES) - failures} of {len(CASES)} bad inputs rejected cleanly")
    extra = accepted_checks() + recording_checks()
    for name, ok, proc in extra:
        print(("ok   " if ok else "FAIL ") + name)
        if not ok:
            failures += 1
            if proc is not None:
                print("  stderr: " + proc.stderr.decode("utf-8", "replace")[:600])
    print(f"{len(CASES) + len(extra) - failures} passed, {failures} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
