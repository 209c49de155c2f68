"""DeepSeek's expert-parallel load balancing algorithm, independently in numpy.

Written from the published description (replicate the hottest expert by load
per replica; pack groups onto nodes and replicas onto GPUs, heaviest first,
into the lightest pack with room), with the same structure as the reference:
vectorised replication, packing in Python loops. The tests compare eplb's
`default` policy with it; bench/wide_reference.py times it beside eplb's
plans (the "DeepSeek reference" column of bench/results/wide.md).
"""
import numpy as np


def _replicate(weight, num_phy):
    n, m = weight.shape
    phy2log = np.tile(np.arange(m), (n, 1))
    phy2log = np.concatenate([phy2log, np.zeros((n, num_phy - m), np.int64)], 1)
    logcnt = np.ones((n, m), np.int64)
    for i in range(m, num_phy):
        hot = np.argmax(weight / logcnt, axis=1)
        phy2log[:, i] = hot
        logcnt[np.arange(n), hot] += 1
    return phy2log, logcnt


def _pack(weight, num_packs):
    n, items = weight.shape
    cap = items // num_packs
    pack = np.zeros((n, items), np.int64)
    rank = np.zeros((n, items), np.int64)
    for i in range(n):
        load = [0.0] * num_packs
        count = [0] * num_packs
        for item in sorted(range(items), key=lambda j: -weight[i, j]):
            p = min((q for q in range(num_packs) if count[q] < cap),
                    key=lambda q: load[q])
            pack[i, item] = p
            rank[i, item] = count[p]
            load[p] += weight[i, item]
            count[p] += 1
    return pack, rank


def _inverse(perm):
    inv = np.empty_like(perm)
    rows = np.arange(perm.shape[0])[:, None]
    inv[rows, perm] = np.arange(perm.shape[1])[None, :]
    return inv


def deepseek_phy2log(weight, num_phy, num_groups, num_nodes, num_gpus):
    weight = np.asarray(weight, np.float64)
    if num_groups % num_nodes != 0:
        num_groups, num_nodes = 1, 1
    n, m = weight.shape
    gsize = m // num_groups
    groups = weight.reshape(n, num_groups, gsize).sum(-1)
    gpack, grank = _pack(groups, num_nodes)
    log2mlog = (((gpack * (num_groups // num_nodes) + grank) * gsize)[:, :, None]
                + np.arange(gsize)).reshape(n, m)
    mlog2log = _inverse(log2mlog)
    per_mlog = np.take_along_axis(weight, mlog2log, 1).reshape(-1, m // num_nodes)
    phy2mlog, mlogcnt = _replicate(per_mlog, num_phy // num_nodes)
    per_phy = np.take_along_axis(per_mlog / mlogcnt, phy2mlog, 1)
    pack, rank = _pack(per_phy, num_gpus // num_nodes)
    phy2pphy = pack * (num_phy // num_gpus) + rank
    pphy2mlog = np.take_along_axis(phy2mlog, _inverse(phy2pphy), 1)
    pphy2mlog = (pphy2mlog.reshape(n, num_nodes, -1)
                 + np.arange(0, m, m // num_nodes)[None, :, None]).reshape(n, -1)
    return np.take_along_axis(mlog2log, pphy2mlog, 1)


