"""Single-pass per-pixel and per-label kernels compiled with Numba (CPU path only).

:func:`erquant.kernels.label_moments` calls these where Numba is installed; the
same sums come from ``bincount`` otherwise (and always on the GPU). One pass over
the pixels replaces ~10 ``bincount`` passes and the float64 copies they need.

Kernels whose rows, strips or chunks are independent (``edt``, ``nearest_in``,
``nearest_within``, ``seed_cores``, ``band_peaks``, ``valleys_cc``, ``orphan_cores``,
``owned``, ``rim_stats``) run their outer loop with ``prange`` on all cores
where Numba's TBB threading layer loads (the ``tbb`` wheel, a dependency on Linux
x86-64): :data:`PARALLEL`. Their results do not depend on the thread count (tested);
calls on small arrays run a serial twin of the same code (:data:`SERIAL_BELOW`,
:class:`_SizeDispatch`: a threaded launch costs more than their work).
``ERQUANT_NO_PARALLEL=1`` or ``NUMBA_NUM_THREADS=1``: one thread. Numba's "workqueue"
layer is never used (it aborts the process when two threads, say dask's, launch
kernels at once), nor GNU OpenMP unless asked for (it kills children forked after it).
"""

from __future__ import annotations

import importlib
import os
import types

import numpy as np

try:
    import numba
    from numba import prange
except Exception:  # pragma: no cover - numba is a core dependency, but stay importable
    numba = None
    prange = range


def _load_tbb() -> bool:
    """Whether Numba's TBB threading layer loads. The ``tbb`` wheel puts libtbb in
    ``<prefix>/lib``, off the loader's path: preload it from there when needed."""
    try:
        importlib.import_module("numba.np.ufunc.tbbpool")
        return True
    except Exception:  # noqa: S110 - libtbb not on the loader's path (pip's wheel)
        pass
    import ctypes
    import sys

    for prefix in dict.fromkeys((sys.prefix, sys.base_prefix)):
        lib = os.path.join(prefix, "lib", "libtbb.so.12")
        if not os.path.exists(lib):
            continue
        try:
            ctypes.CDLL(lib, mode=ctypes.RTLD_GLOBAL)
            importlib.import_module("numba.np.ufunc.tbbpool")
            return True
        except Exception:  # noqa: S112 - an unusable copy: try the next
            continue
    return False


def _parallel_layer() -> bool:
    """Whether the prange kernels may run threaded: TBB loads (thread- and fork-safe),
    or the user asked for OpenMP by ``NUMBA_THREADING_LAYER=omp`` (GNU OpenMP kills a
    child forked after it ran, so erquant never picks it by itself)."""
    if numba is None or os.environ.get("ERQUANT_NO_PARALLEL") == "1":
        return False
    layer = os.environ.get("NUMBA_THREADING_LAYER", "")
    if layer == "omp":
        return True
    if layer not in ("", "tbb", "safe", "threadsafe") or not _load_tbb():
        return False  # workqueue (or "default"), or no TBB: serial
    if not layer:
        numba.config.THREADING_LAYER = "tbb"
    return True


#: the prange kernels are compiled parallel (see the module docstring)
PARALLEL = _parallel_layer()
#: reductions over the pixels run in this many chunks whatever the thread count (each
#: with its own sums, added in order): results do not depend on the threads
CHUNKS = 16
#: label_moments sums its rows in this many chunks (fewer where the chunks' tables
#: would hold over 128 MB in all)
MOMENT_CHUNKS = 4


def strips() -> int:
    """Horizontal strips for the painting kernels: 4 per thread when parallel, else 1."""
    return 4 * numba.get_num_threads() if PARALLEL else 1


def _slot(nuc, cyt, K, y, x):
    # a pixel's moments slot: its nucleus id, else K + its cell id, else 0
    s = np.int64(nuc[y, x])
    if s > 0:
        return s
    c = np.int64(cyt[y, x])
    return c + K if c > 0 else np.int64(0)


def _moments_impl(nuc, cyt, K, images, squared, shifts, maps, nmaps, c0, c1, cws, segend,
                  out):
    """out[0] count, out[1] Σy, out[2] Σx, then per image Σv (and Σ(v - shift)² where
    ``squared``), then per separable map ``m`` (the first ``nmaps`` of ``maps``)
    Σ (m[y, c0[x]] (1 - cw[x]) + m[y, c1[x]] cw[x]), over slots: nucleus id where
    nuc > 0, else K + cell id where cyt > 0. ``out`` is (chunks, slots, rows): the
    rows of the image in that many horizontal chunks (in parallel where compiled so),
    each summed into its own table; the caller adds them in order (the same sums on any
    thread count).

    Each row is taken as runs of one slot: the count, Σy and Σx of a run in closed
    form (exact integers), its image sums in registers, and a map's sum from the
    prefix sums ``cws`` of cw (cws[x] = Σ cw[:x], float64) over the run's pieces
    where c0 is constant (``segend[x]``: the end of x's piece), as
    m[y, a] · (n - Σcw) + m[y, b] · Σcw: one table update per run and row, not per
    pixel (sums in another order than pixel by pixel: equal to ~1e-15)."""
    Y, X = nuc.shape
    C = len(images)
    nch = out.shape[0]
    h = (Y + nch - 1) // nch
    for k in prange(nch):
        o = out[k]
        for y in range(k * h, min(Y, k * h + h)):
            x = 0
            while x < X:
                s = _slot(nuc, cyt, K, y, x)
                if s == 0:
                    x += 1
                    continue
                x0 = x
                x += 1
                while x < X and _slot(nuc, cyt, K, y, x) == s:
                    x += 1
                n = x - x0
                o[s, 0] += n
                o[s, 1] += y * n
                o[s, 2] += (x0 + x - 1) * n // 2
                row = 3
                for i in range(C):
                    im = images[i]
                    acc = 0.0
                    if squared[i]:
                        sh = shifts[i]
                        acc2 = 0.0
                        for j in range(x0, x):
                            v = im[y, j]
                            acc += v
                            d = v - sh
                            acc2 += d * d
                        o[s, row] += acc
                        o[s, row + 1] += acc2
                        row += 2
                    else:
                        for j in range(x0, x):
                            acc += im[y, j]
                        o[s, row] += acc
                        row += 1
                for j in range(nmaps):
                    m = maps[j]
                    acc = 0.0
                    a = x0
                    while a < x:
                        b = min(x, segend[a])
                        sw = cws[b] - cws[a]
                        acc += m[y, c0[a]] * ((b - a) - sw) + m[y, c1[a]] * sw
                        a = b
                    o[s, row] += acc
                    row += 1


def _table_chunks(n, rows):
    """How many chunks a per-label reduction over ``n`` elements into a table of
    ``rows`` entries runs in: :data:`CHUNKS`, fewer where the chunks' own tables would
    hold over 4 M entries in all, or where the elements are few (one below 65,536)."""
    if n < 65536:
        return 1
    return max(1, min(CHUNKS, (1 << 22) // max(1, rows)))


def _scatter_max_impl(out, labels, values):
    """out[labels[i]] = max(out[labels[i]], values[i]) over flat arrays. Chunks
    (parallel where compiled so) each into their own copy of ``out``, merged in order
    with the same comparison: the same result on any thread count."""
    n = labels.size
    nch = _table_chunks(n, out.size)
    if nch == 1:
        for i in range(n):
            k = labels[i]
            v = values[i]
            if v > out[k]:
                out[k] = v
        return
    part = np.empty((nch, out.size), out.dtype)
    h = (n + nch - 1) // nch
    for c in prange(nch):
        o = part[c]
        o[:] = out
        for i in range(c * h, min(n, c * h + h)):
            k = labels[i]
            v = values[i]
            if v > o[k]:
                o[k] = v
    for c in range(nch):
        o = part[c]
        for k in range(out.size):
            if o[k] > out[k]:
                out[k] = o[k]


def _add_moments(out, k, y, x):
    # row k of a moments table += (1, y, x, y², x², xy) (integers: exact in float64)
    out[k, 0] += 1.0
    out[k, 1] += y
    out[k, 2] += x
    out[k, 3] += y * y
    out[k, 4] += x * x
    out[k, 5] += y * x


def _shape_moments_impl(labels, out):
    """out[k] += (1, y, x, y², x², xy) over the pixels of label k (2-D labels)."""
    H, W = labels.shape
    for y in range(H):
        for x in range(W):
            k = labels[y, x]
            if k:
                _add_moments(out, k, y, x)


def _object_stats_impl(labels, dist, smooth, out):
    """Per label k of a 2-D label image: out[k, :6] the moments of
    :func:`_shape_moments_impl`, out[k, 6] the maximum of ``dist`` and out[k, 7] of
    ``smooth`` over its pixels (both ≥ 0 where the label is absent: out starts at 0).
    Row chunks (parallel where compiled so), each into its own table, then added (the
    moments: integer sums, exact in any order) and maximised in order."""
    H, W = labels.shape
    n = out.shape[0]
    nch = max(1, min(CHUNKS, H // 16, (1 << 22) // max(1, 8 * n)))
    part = np.zeros((nch, n, 8), np.float64)
    h = (H + nch - 1) // nch
    for c in prange(nch):
        o = part[c]
        for y in range(c * h, min(H, c * h + h)):
            lrow = labels[y]
            drow = dist[y]
            srow = smooth[y]
            for x in range(W):
                k = lrow[x]
                if k:
                    _add_moments(o, k, y, x)
                    o[k, 6] = max(o[k, 6], drow[x])
                    o[k, 7] = max(o[k, 7], srow[x])
    for c in range(nch):
        o = part[c]
        for k in range(n):
            for j in range(6):
                out[k, j] += o[k, j]
            out[k, 6] = max(out[k, 6], o[k, 6])
            out[k, 7] = max(out[k, 7], o[k, 7])


def _box_moments_impl(labels, ids, boxes, out):
    """out[j] = (1, y, x, y², x², xy) summed over the pixels of label ids[j] inside its
    box boxes[ids[j]] (min y, min x, max y + 1, max x + 1) in raster order: the sums of
    :func:`_shape_moments_impl` to the bit where the box holds the label whole."""
    for j in range(ids.size):
        k = ids[j]
        for y in range(boxes[k, 0], boxes[k, 2]):
            for x in range(boxes[k, 1], boxes[k, 3]):
                if labels[y, x] == k:
                    _add_moments(out, j, y, x)


def _box_take(o, k, y, x):
    # grow box k of o (rows (min y, min x, max y + 1, max x + 1)) over pixel (y, x)
    if y < o[k, 0]:
        o[k, 0] = y
    if x < o[k, 1]:
        o[k, 1] = x
    if y >= o[k, 2]:
        o[k, 2] = y + 1
    if x >= o[k, 3]:
        o[k, 3] = x + 1


def _box_merge(out, part):
    # out's boxes grown over each chunk's boxes part[c] (the union, in chunk order)
    for c in range(part.shape[0]):
        o = part[c]
        for k in range(out.shape[0]):
            out[k, 0] = min(out[k, 0], o[k, 0])
            out[k, 1] = min(out[k, 1], o[k, 1])
            out[k, 2] = max(out[k, 2], o[k, 2])
            out[k, 3] = max(out[k, 3], o[k, 3])


def _label_bbox_impl(labels, words, per, want, out):
    """Bounding box (min y, min x, max y + 1, max x + 1) of each label k with
    ``want[k]`` into out[k] (which starts as (H, W, 0, 0)); 2-D labels, background
    skipped ``per`` pixels at a time (``words``: the flat labels' groups of ``per`` as
    uint64). Word-aligned chunks (parallel where compiled so), each with its own boxes,
    then their minima and maxima."""
    H, W = labels.shape
    flat = labels.ravel()
    n = flat.size
    nb = out.shape[0]
    nch = _table_chunks(n, 4 * nb)
    part = np.empty((nch, nb, 4), out.dtype)
    for c in prange(nch):
        o = part[c]
        o[:, :] = out
        start, end = _word_chunk(n, c, nch, per)
        jend = (end + per - 1) // per
        j = _next_word(words, start // per, jend)
        while j < jend:
            for i in range(max(start, per * j), min(end, per * j + per)):
                k = flat[i]
                if k and want[k]:
                    y = i // W
                    _box_take(o, k, y, i - y * W)
            j = _next_word(words, j + 1, jend)
    _box_merge(out, part)


def _range_count_impl(a, level):
    """(min, max, number of values >= level) of a 2-D array in one pass: rows in
    parallel where compiled so (each row's loop of selects vectorises), each row
    starting from ``a[0, 0]`` like one serial scan (a NaN there stays the answer;
    other NaNs are never < or >), merged with the same comparisons: the serial scan's
    result on any thread count."""
    Y, X = a.shape
    first = a[0, 0]
    lo_p = np.empty(Y, a.dtype)
    hi_p = np.empty(Y, a.dtype)
    n_p = np.zeros(Y, np.int64)
    for y in prange(Y):
        row = a[y]
        lo = first
        hi = first
        n = 0
        for x in range(X):
            v = row[x]
            lo = v if v < lo else lo
            hi = v if v > hi else hi
            n += 1 if v >= level else 0
        lo_p[y] = lo
        hi_p[y] = hi
        n_p[y] = n
    lo = first
    hi = first
    n = 0
    for y in range(Y):
        if lo_p[y] < lo:
            lo = lo_p[y]
        if hi_p[y] > hi:
            hi = hi_p[y]
        n += n_p[y]
    return lo, hi, n


def _scan_order_map_impl(seeds, cc, out):
    """out = id of the ``cc[i]``-th non-zero pixel of ``seeds`` in scan order (cc ≥ 1)."""
    n = 0
    for i in range(seeds.size):
        if seeds[i] != 0:
            n += 1
    lut = np.zeros(n + 1, dtype=seeds.dtype)
    k = 0
    for i in range(seeds.size):
        if seeds[i] != 0:
            k += 1
            lut[k] = seeds[i]
    for i in range(cc.size):
        out[i] = lut[cc[i]]


def _next_word(words, j, jend):
    """The first j' >= j before ``jend`` whose word of ``words`` (a flat array's groups
    of ``per`` elements viewed as uint64: :func:`erquant.kernels._words`) is not all
    zeros (a word past the last whole one counts as not: the tail is visited), else
    ``jend``. The sparse kernels' loop over a flat range [start, end)::

        jend = (end + per - 1) // per
        j = _next_word(words, start // per, jend)
        while j < jend:
            for jt in range(per):  # (8: a constant trip count, unrolled)
                i = per * j + jt
                if i < start:
                    continue
                if i >= end:
                    break
                ...
            j = _next_word(words, j + 1, jend)

    visits every element of [start, end) but the runs of zeros a word long, those
    passed in a tight loop of their own (as a branch of one loop over all the words,
    beside the unrolled body, a pass over a 2048² mask took 2-4 ms more on one core)."""
    nw = words.size
    while j < jend and j < nw and words[j] == np.uint64(0):
        j += 1
    return j


def _word_chunk(n, k, nch=CHUNKS, per=8):
    """Flat range [start, end) of chunk ``k`` of ``nch`` (:data:`CHUNKS`) over ``n``
    elements, each chunk a whole number of ``per``-element words long (so no two chunks
    share a word of the sparse kernels' masks)."""
    h = (((n + nch - 1) // nch) + per - 1) // per * per
    start = min(n, k * h)
    return start, min(n, start + h)


def _present_impl(labels, n):
    """Boolean presence of each label 0..n in a flat label array."""
    out = np.zeros(n + 1, dtype=np.bool_)
    for i in range(labels.size):
        out[labels[i]] = True
    return out


def _relabel_foreground_impl(labels, smooth, peak, thr, contrast, radius, keep, ri, ci,
                             use_keep, out, pres):
    """out = the pixel's label where ``keep[ri[y], ci[x]]`` (interior, with
    ``use_keep``); else 0 where not (smooth > thr and smooth > contrast · peak); else
    the pixel's label, or for an unlabelled pixel the largest label within ``radius``
    (a square window cut at the image border). ``pres`` (chunks × (top + 1) bools, all
    False; top >= every label): pres[c, v] set where a row of chunk c of ``out`` holds
    v (OR over chunks: the labels present), each row read while it is in cache. Row
    chunks in parallel where compiled so: per row the rule in branch-free selects
    (vectorised) that mark the unlabelled foreground, then the window search for the
    marked pixels only (a band a few px wide around the objects: no image-wide maximum
    filter of the labels)."""
    Y, X = labels.shape
    SENT = labels.dtype.type(-1)  # max of the unsigned type: "search here", never an id
    ZERO = labels.dtype.type(0)
    use_peak = contrast > 0
    h = (Y + CHUNKS - 1) // CHUNKS
    for k in prange(CHUNKS):
        kcol = np.zeros(X, np.bool_)
        last = -1
        seen = pres[k]
        for y in range(k * h, min(Y, k * h + h)):
            if use_keep and ri[y] != last:  # this row's interior flags, once per source row
                last = ri[y]
                krow = keep[last]
                for x in range(X):
                    kcol[x] = krow[ci[x]]
            lrow = labels[y]
            srow = smooth[y]
            prow = peak[y]
            orow = out[y]
            marked = False
            for x in range(X):  # branch-free selects: vectorised
                v = srow[x]
                fg = (v > thr) & ((not use_peak) | (v > contrast * prow[x]))
                lab = lrow[x]
                inside = lab if (fg | kcol[x]) else ZERO
                outside = SENT if fg else ZERO
                orow[x] = inside if lab > ZERO else outside
                marked |= fg & (lab == ZERO)
            if marked:  # the largest label within radius, for the unlabelled foreground
                y0 = max(0, y - radius)
                y1 = min(Y, y + radius + 1)
                for x in range(X):
                    if orow[x] == SENT:
                        best = ZERO
                        for yy in range(y0, y1):
                            wrow = labels[yy]
                            for xx in range(max(0, x - radius), min(X, x + radius + 1)):
                                w = wrow[xx]
                                if w > best:
                                    best = w
                        orow[x] = best
            for x in range(X):
                seen[orow[x]] = True


def _interior_impl(labels, out):
    """out = labels > 0 and its 3×3 neighbourhood (inside the image) all one label:
    ``(labels > 0) & (min filter == max filter)`` with reflected borders, in one pass
    (rows in parallel where compiled so)."""
    Y, X = labels.shape
    for y in prange(Y):
        up = labels[max(y - 1, 0)]
        row = labels[y]
        dn = labels[min(y + 1, Y - 1)]
        orow = out[y]
        for x in range(X):
            v = row[x]
            xl = max(x - 1, 0)
            xr = min(x + 1, X - 1)
            same = ((up[xl] == v) & (up[x] == v) & (up[xr] == v) & (row[xl] == v)
                    & (row[xr] == v) & (dn[xl] == v) & (dn[x] == v) & (dn[xr] == v))
            orow[x] = same & (v > 0)


def _paste_upsampled_impl(seeds, small, ri, ci, out):
    """out = seeds where > 0, else small[ri[y], ci[x]] (rows in parallel where compiled
    so)."""
    Y, X = seeds.shape
    h = (Y + CHUNKS - 1) // CHUNKS
    for k in prange(CHUNKS):  # row chunks: each source row expanded once, then selects
        row = np.empty(X, out.dtype)
        last = -1
        for y in range(k * h, min(Y, k * h + h)):
            r = ri[y]
            if r != last:
                last = r
                srow = small[r]
                for x in range(X):
                    row[x] = srow[ci[x]]
            srow_seeds = seeds[y]
            orow = out[y]
            for x in range(X):  # branch-free: vectorised
                s = srow_seeds[x]
                orow[x] = s if s > 0 else row[x]


def _gather2d_impl(src, ri, ci, out):
    """out[y, x] = src[ri[y], ci[x]]."""
    Y, X = out.shape
    for y in range(Y):
        r = ri[y]
        for x in range(X):
            out[y, x] = src[r, ci[x]]


def _nonzero_impl(flat, words, per, out):
    """Indices of the non-zero elements of a flat array, ascending, written to ``out``;
    returns their count. ``words``: the array's first ``size // per`` groups of ``per``
    elements viewed as uint64 (runs of zeros skipped a word at a time)."""
    n = 0
    jend = (flat.size + per - 1) // per
    j = _next_word(words, 0, jend)
    while j < jend:
        for i in range(per * j, min(flat.size, per * j + per)):
            if flat[i] != 0:
                out[n] = i
                n += 1
        j = _next_word(words, j + 1, jend)
    return n


def _label_sparse_impl(idx, n, X, out):
    """8-connected components of the ``n`` pixels at flat indices ``idx`` (ascending) of
    an image ``X`` wide, written into ``out`` (flat int32, all 0 on entry), numbered in
    the raster order of each component's first pixel (as :func:`label`); returns their
    count. Union-find over the pixels: each joins its already visited W, NW, N and NE
    neighbours (``out`` holds a visited pixel's position + 1 meanwhile)."""
    parent = np.arange(n, dtype=np.int64)
    for k in range(n):
        p = idx[k]
        y = p // X
        x = p - y * X
        for d in range(4):  # W, NW, N, NE
            yy = y if d == 0 else y - 1
            xx = x - 1 if d < 2 else (x if d == 2 else x + 1)
            if yy >= 0 and 0 <= xx < X:
                j = out[yy * X + xx]
                if j > 0:  # (the smaller position, the earlier pixel, is the root)
                    _uf_union(parent, j - 1, k)
        out[p] = k + 1
    ids = np.zeros(n, np.int32)
    m = 0
    for k in range(n):
        a = _uf_find(parent, k)
        if a == k:  # a root: its component's first pixel (the earliest joins win)
            m += 1
            ids[k] = m
        out[idx[k]] = ids[a]
    return m


def _seed_edges_impl(seeds, out, counts, nstrips):
    """Flat indices (ascending) of the pixels of ``seeds`` (2-D int32, > 0) with a
    4-neighbour inside the image that is not a seed (<= 0): the only seed pixels that
    can be the nearest of a pixel outside (:func:`_nearest_within_impl`). Rows in
    ``nstrips`` horizontal strips (parallel where compiled so): strip k writes its indices to
    ``out`` from its first pixel's index on, and its count to ``counts[k]``. Per row
    the edge flags in branch-free selects over the row and its two neighbours
    (vectorised), then listed, eight flags at a time past the zeros."""
    Y, X = seeds.shape
    h = (Y + nstrips - 1) // nstrips
    for k in prange(nstrips):
        a = min(Y, k * h)
        b = min(Y, a + h)
        n = a * X
        nw = (X + 7) // 8
        flag = np.zeros(8 * nw, np.uint8)  # (the tail past X stays 0)
        fw = flag.view(np.uint64)
        for y in range(a, b):
            row = seeds[y]
            up = seeds[max(y - 1, 0)]
            dn = seeds[min(y + 1, Y - 1)]
            has_up = y > 0
            has_dn = y < Y - 1
            for x in range(1, X - 1):
                flag[x] = (row[x] > 0) & ((has_up & (up[x] <= 0)) | (has_dn & (dn[x] <= 0))
                                          | (row[x - 1] <= 0) | (row[x + 1] <= 0))
            if X == 1:
                flag[0] = (row[0] > 0) & ((has_up & (up[0] <= 0)) | (has_dn & (dn[0] <= 0)))
            else:
                flag[0] = (row[0] > 0) & ((has_up & (up[0] <= 0)) | (has_dn & (dn[0] <= 0))
                                          | (row[1] <= 0))
                e = X - 1
                flag[e] = (row[e] > 0) & ((has_up & (up[e] <= 0)) | (has_dn & (dn[e] <= 0))
                                          | (row[e - 1] <= 0))
            r = y * X
            for j in range(nw):  # (eight flags at a time past the zeros: edges are few)
                if fw[j] == 0:
                    continue
                for x in range(8 * j, 8 * j + 8):
                    out[n] = r + x
                    n += flag[x]
        counts[k] = n - a * X


def _seed_reach_impl(seeds, idx, radius, out):
    """Each seed pixel's painting reach for :func:`_seed_cores_impl` (``idx``: the seed
    pixels' flat indices, ascending): the largest radius[id] of the seed pixels q' (its
    own included) within 2 · radius[id(q')] of it, rounded up. A pixel whose nearest
    seed pixel q lies beyond radius[id(q)] must still be claimed by q (it stays 0) and
    not by a farther seed q' whose disc holds it; then |q - q'| <= 2 · radius[id(q')],
    so q paints it. The rest of a disc of the largest radius changes nothing."""
    X = seeds.shape[1]
    n = idx.size
    ys = np.empty(n, np.int64)
    xs = np.empty(n, np.int64)
    rs = np.empty(n, np.float64)
    rmax = 0.0
    for j in range(n):
        p = idx[j]
        y = p // X
        ys[j] = y
        xs[j] = p - y * X
        rs[j] = radius[seeds[y, p - y * X]]
        rmax = max(rmax, rs[j])
    span = int(np.ceil(2.0 * rmax))
    for j in prange(n):
        y = ys[j]
        x = xs[j]
        best = rs[j]
        lo = np.searchsorted(ys, y - span)
        hi = np.searchsorted(ys, y + span + 1)
        for k in range(lo, hi):
            r = rs[k]
            if r > best:
                dy = np.float64(ys[k] - y)
                dx = np.float64(xs[k] - x)
                if dy * dy + dx * dx <= 4.0 * r * r:
                    best = r
        out[j] = int(np.ceil(best))


def _seed_cores_impl(seeds, mask, radius, reach, idx, pr, out, nstrips):
    """out = the seed id where seeds > 0; else, on ``mask``, the id of the nearest seed
    pixel (exact Euclidean; ties to the first in scan order) where that distance is
    ≤ radius[id]; else 0. The seed pixels (``idx``: their flat indices, ascending) paint
    their disc of ``pr[j]`` px (:func:`_seed_reach_impl`: the same result as discs of
    ``reach`` px, the largest radius, for all). The rows are done in ``nstrips``
    horizontal strips (in parallel where compiled so), each cleared, painted by the
    seeds within reach of it in scan order and decided on its own: the same result for
    any count; nothing but the seed pixels and the strips' rows is read."""
    Y, X = seeds.shape
    R = reach
    h = (Y + nstrips - 1) // nstrips
    for k in prange(nstrips):
        a = k * h
        b = min(Y, a + h)
        if a >= b:
            continue
        # squared distance of the painted seed, read only where out holds one (> 0):
        # never cleared
        best = np.empty((b - a, X), np.int32)
        for y in range(a, b):
            for x in range(X):
                out[y, x] = 0
        j0 = np.searchsorted(idx, max(0, a - R) * X)
        j1 = np.searchsorted(idx, min(Y, b + R) * X)
        for j in range(j0, j1):
            p = idx[j]
            y = p // X
            x = p - y * X
            s = seeds[y, x]
            Rj = pr[j]
            R2 = Rj * Rj
            for yy in range(max(a, y - Rj), min(b, y + Rj + 1)):
                dy2 = (yy - y) * (yy - y)
                brow = best[yy - a]
                orow = out[yy]
                for xx in range(max(0, x - Rj), min(X, x + Rj + 1)):
                    d2 = dy2 + (xx - x) * (xx - x)
                    if d2 <= R2 and (orow[xx] == 0 or d2 < brow[xx]):
                        brow[xx] = d2
                        orow[xx] = s
        for y in range(a, b):
            for x in range(X):
                s = out[y, x]
                if s <= 0:
                    continue
                if seeds[y, x] > 0:
                    out[y, x] = seeds[y, x]
                elif not mask[y, x] or best[y - a, x] > radius[s] * radius[s]:
                    out[y, x] = 0


def _reflect(i, n):
    """Index ``i`` reflected into [0, n) as OpenCV's BORDER_REFLECT (edge repeated)."""
    if i < 0:
        return -i - 1
    if i >= n:
        return 2 * n - i - 1
    return i


def _ext2(dst, a, b, dilate):
    """dst = max(a, b) (``dilate``) or min(a, b), elementwise (row slices from 0)."""
    if dilate:
        for x in range(dst.size):
            dst[x] = max(a[x], b[x])
    else:
        for x in range(dst.size):
            dst[x] = min(a[x], b[x])


def _ext3(dst, a, b, c, dilate):
    """dst = max(a, b, c) (``dilate``) or their min, elementwise."""
    if dilate:
        for x in range(dst.size):
            dst[x] = max(max(a[x], b[x]), c[x])
    else:
        for x in range(dst.size):
            dst[x] = min(min(a[x], b[x]), c[x])


def _fold2(dst, a, b, dilate):
    """dst = max(dst, max(a, b)) (``dilate``) or the min, in place (one name for dst:
    the loop vectorises)."""
    if dilate:
        for x in range(dst.size):
            dst[x] = max(dst[x], max(a[x], b[x]))
    else:
        for x in range(dst.size):
            dst[x] = min(dst[x], min(a[x], b[x]))


def _disc_morph_impl(src, yi, xi, halfw, dilate, out):
    """Grey erosion (``dilate`` False) or dilation of float32 ``src`` by a structuring
    element of symmetric, contiguous rows (OpenCV's ellipse): row ``k`` (offset
    ``k - R``, ``R = (halfw.size - 1) // 2``, ``halfw[k] == halfw[2R - k]``) spans
    ``[-halfw[k], halfw[k]]``. Borders come from the index maps ``yi`` / ``xi`` (padded
    row ``j`` is source row ``yi[j]``, padded column ``i`` source column ``xi[i]``:
    BORDER_REFLECT's), so the values are OpenCV's ``erode`` / ``dilate`` with that
    border, exactly (min and max do not round).

    Per band of 128 output rows (``prange``): the band's padded rows, then the rows'
    running window extremes grown from width 0 to the widest (a window of half-width
    ``w + d`` is two of half-width ``w`` ``2 d`` apart, where ``d <= w``), and at each
    width in use the element's rows of that width folded into the output at their
    offsets, a symmetric pair per sweep. Cost per pixel ~ (distinct widths + R) sweeps
    of cache-resident rows, against the element's area for OpenCV's general
    (non-rectangular) element."""
    H, W = src.shape
    R = (halfw.size - 1) // 2
    Rx = 0
    for k in range(halfw.size):
        if halfw[k] > Rx:
            Rx = halfw[k]
    Wp = W + 2 * Rx
    B = 128
    nb = (H + B - 1) // B
    for b in prange(nb):
        y0 = b * B
        n = min(H, y0 + B) - y0
        rows = n + 2 * R
        cur = np.empty((rows, Wp), np.float32)
        nxt = np.empty((rows, Wp), np.float32)
        for j in range(rows):
            s = src[yi[y0 + j]]
            c = cur[j]
            for i in range(Rx):
                c[i] = s[xi[i]]
            for x in range(W):
                c[Rx + x] = s[x]
            for i in range(Rx + W, Wp):
                c[i] = s[xi[i]]
        first = True
        w = 0  # cur holds the running extremes of half-width w (valid on [w, Wp - w))
        while True:
            # fold the element's rows of half-width w (k and its mirror 2R - k)
            for k in range(R + 1):
                if halfw[k] != w:
                    continue
                m = 2 * R - k
                for y in range(n):
                    o = out[y0 + y]
                    a = cur[y + k, Rx:Rx + W]
                    c = cur[y + m, Rx:Rx + W]
                    if first:
                        _ext2(o, a, c, dilate)
                    else:
                        _fold2(o, a, c, dilate)
                first = False
            # the next width in use
            nw = Rx + 1
            for k in range(R + 1):
                if w < halfw[k] < nw:
                    nw = halfw[k]
            if nw > Rx:
                break
            while w < nw:
                d = 1 if w == 0 else min(nw - w, w)
                lo, hi = w + d, Wp - w - d
                for j in range(rows):
                    a = cur[j]
                    if w == 0:
                        _ext3(nxt[j, lo:hi], a[lo - 1:hi - 1], a[lo:hi], a[lo + 1:hi + 1],
                              dilate)
                    else:
                        _ext2(nxt[j, lo:hi], a[lo - d:hi - d], a[lo + d:hi + d], dilate)
                cur, nxt = nxt, cur
                w += d


def _histogram_impl(vals, first, last, edges, counts):
    """np.histogram(vals, bins=len(counts), range=(first, last)) of float32 ``vals`` (any
    2-D layout) into ``counts``: values outside the range dropped (compared in float32),
    each value counted in the bin of the float32 ``edges``
    (``np.linspace(first, last, n + 1, dtype=float32)``) that holds it, the last bin
    closed, as NumPy 2's equal-bin arithmetic ends (an index from the float32
    difference to the first edge, then moved where it disagrees with the edges). The
    first index here comes from a product by the bins per unit, not NumPy's quotient
    (a division per value was most of the cost): at most one bin away, and the edges
    decide as in NumPy. Each chunk counts into four tables by column (a run of
    values in one bin does not wait on its own increments)."""
    nb = counts.size
    f32 = np.float32(first)
    l32 = np.float32(last)
    scale = nb / (last - first)
    H, W = vals.shape
    # row chunks (parallel where compiled so), each with its own counts (integer counts:
    # the same sums in any order; few chunks, so that their tables stay small)
    nch = min(_table_chunks(H * W, nb), H, 4)
    part = np.zeros((nch, 4, nb), np.int64)
    h = (H + nch - 1) // nch
    for c in prange(nch):
        for y in range(c * h, min(H, c * h + h)):
            for x in range(W):
                v = vals[y, x]
                if not (v >= f32 and v <= l32):
                    continue
                d = np.float64(np.float32(v - f32))
                i = min(int(d * scale), nb - 1)
                while i > 0 and v < edges[i]:
                    i -= 1
                while i < nb - 1 and v >= edges[i + 1]:
                    i += 1
                part[c, x & 3, i] += 1
    for c in range(nch):
        for k in range(4):
            for i in range(nb):
                counts[i] += part[c, k, i]


def _label_area_impl(labels, out):
    # out[k] += number of pixels of label k (a 2-D view, strided or not: no copy); row
    # chunks (parallel where compiled so), each with its own counts
    H, W = labels.shape
    nch = min(_table_chunks(H * W, out.size), H)
    part = np.zeros((nch, out.size), np.int64)
    h = (H + nch - 1) // nch
    for c in prange(nch):
        cnt = part[c]
        for y in range(c * h, min(H, c * h + h)):
            row = labels[y]
            for x in range(W):
                cnt[row[x]] += 1
    for c in range(nch):
        for k in range(out.size):
            out[k] += part[c, k]


def _valleys_cc_impl(g, cc, is_cluster, sigma2, strength, within, wwithin, sparse, out):
    """out = cluster & (λmax σ² / max(g, 1e-6) > strength) & (λmin < 0.3 λmax), where
    cluster = is_cluster[cc] (a per-component table: no whole-image mask is built);
    the Hessian of ``g`` by repeated central differences (kernels.hessian), computed
    only inside the clusters: one pass instead of ~15 whole-image array operations.
    With ``sparse`` only the pixels of ``within`` (which holds every cluster pixel;
    ``wwithin``: its flat bytes as uint64 words) are visited and ``out`` must hold
    False on entry."""
    H, W = g.shape
    zero = np.uint64(0)
    for y in prange(H):
        ym1, yp1 = _reflect(y - 1, H), _reflect(y + 1, H)
        ym2, yp2 = _reflect(y - 2, H), _reflect(y + 2, H)
        r = y * W
        x = -1
        while x < W - 1:
            x += 1
            if sparse:
                if ((r + x) & 7) == 0:  # past zero words in a tight loop
                    while x + 8 <= W and wwithin[(r + x) >> 3] == zero:
                        x += 8
                    if x >= W:
                        break
                if not within[y, x]:
                    continue
            if not is_cluster[cc[y, x]]:
                out[y, x] = False
                continue
            xm1, xp1 = _reflect(x - 1, W), _reflect(x + 1, W)
            xm2, xp2 = _reflect(x - 2, W), _reflect(x + 2, W)
            c = g[y, x]
            gyy = np.float32(0.25) * (g[ym2, x] + g[yp2, x]) - np.float32(0.5) * c
            gxx = np.float32(0.25) * (g[y, xm2] + g[y, xp2]) - np.float32(0.5) * c
            gxy = np.float32(0.25) * (g[yp1, xp1] - g[yp1, xm1] - g[ym1, xp1] + g[ym1, xm1])
            half = (gyy - gxx) / 2
            root = np.sqrt(half * half + gxy * gxy)
            mean = (gyy + gxx) / 2
            lmax = mean + root
            lmin = mean - root
            rel = lmax * sigma2 / max(c, np.float32(1e-6))
            out[y, x] = (rel > strength) and (lmin < np.float32(0.3) * lmax)


def _band_peaks_impl(sdist, score, mask, wmask, edges, halfs, out):
    """out = mask & (score >= the maximum of score over the (2 halfs[k] + 1)² window)
    where edges[k] <= sdist < edges[k + 1] (pixels below edges[0] or above the last
    edge: False), in one pass that reads each candidate's window (stopping at the first
    greater score) instead of one maximum filter per band. Windows are cut at the image
    border: the same as a maximum filter with reflected borders (a reflected pixel lies
    inside the window). Rows in parallel where compiled so, each cleared, then its
    ``mask`` pixels visited (``wmask``: the mask's flat bytes as uint64 words, zero
    words passed: :func:`_next_word`)."""
    H, W = sdist.shape
    nb = edges.shape[0] - 1
    for y in prange(H):
        orow = out[y]
        for x in range(W):
            orow[x] = False
        r = y * W
        jend = (r + W + 7) // 8
        j = _next_word(wmask, r // 8, jend)
        while j < jend:
            for jt in range(8):  # (a constant trip count: unrolled)
                x = 8 * j + jt - r
                if x < 0:
                    continue
                if x >= W:
                    break
                if not mask[y, x]:
                    continue
                d = sdist[y, x]
                if d < edges[0] or d >= edges[nb]:
                    continue
                k = 0
                while d >= edges[k + 1]:
                    k += 1
                h = halfs[k]
                v = score[y, x]
                ok = True
                for yy in range(max(0, y - h), min(H, y + h + 1)):
                    for xx in range(max(0, x - h), min(W, x + h + 1)):
                        if score[yy, xx] > v:
                            ok = False
                            break
                    if not ok:
                        break
                orow[x] = ok
            j = _next_word(wmask, j + 1, jend)


def _clump_maxima_impl(smooth, labels, ids, boxes, pad, w, half, offsets, counts, ys,
                       xs, gv):
    """For each candidate ``ids[j]`` (box ``boxes[ids[j]]``: min y, min x, max y + 1,
    max x + 1), :func:`erquant.segment._split_oversized`'s intensity maxima: ``smooth``
    over the box padded by ``pad`` (cut at the image) blurred by ``w`` (the compiled
    Gaussian's rows, borders reflected at the crop's edge: K.gaussian of the crop),
    its maximum filter of half-width ``half`` (reflected likewise: an exact maximum),
    and the box's pixels of the candidate whose blur is at least that maximum, in
    raster order: their box coordinates and blurred values from ``offsets[j]`` on in
    ``ys``, ``xs``, ``gv``, their number in ``counts[j]``. Candidates in parallel where
    compiled so (each with its own crop buffers): one call for all of them."""
    H, W = smooth.shape
    r = (w.size - 1) // 2
    for j in prange(ids.size):
        k = ids[j]
        y0, x0, y1, x1 = boxes[k, 0], boxes[k, 1], boxes[k, 2], boxes[k, 3]
        py0, px0 = max(0, y0 - pad), max(0, x0 - pad)
        py1, px1 = min(H, y1 + pad), min(W, x1 + pad)
        ch, cw = py1 - py0, px1 - px0
        crop = np.empty((ch, cw), np.float32)
        for y in range(ch):
            for x in range(cw):
                crop[y, x] = smooth[py0 + y, px0 + x]
        gp = np.empty((ch, cw), np.float32)
        tmp = np.empty(cw + 2 * r, np.float32)
        for y in range(ch):
            _blur_row(crop, ch, 0, y, w, tmp, gp[y])
        n = 0
        base = offsets[j]
        for y in range(y0 - py0, y1 - py0):
            for x in range(x0 - px0, x1 - px0):
                if labels[py0 + y, px0 + x] != k:
                    continue
                g = gp[y, x]
                top = g
                for yy in range(y - half, y + half + 1):
                    ry = _reflect(yy, ch)
                    for xx in range(x - half, x + half + 1):
                        v = gp[ry, _reflect(xx, cw)]
                        if v > top:
                            top = v
                if g >= top:
                    ys[base + n] = y - (y0 - py0)
                    xs[base + n] = x - (x0 - px0)
                    gv[base + n] = g
                    n += 1
        counts[j] = n


def _softmax3_impl(z, y0, x0, out):
    # softmax over the 3 class logits of every pixel of z[:, y0:, x0:] (the window out
    # covers), one pass, two exponentials per pixel in float32 (differences clamped: no
    # overflow)
    lim = np.float32(80.0)
    one = np.float32(1.0)
    for y in range(out.shape[1]):
        for x in range(out.shape[2]):
            a = z[0, y0 + y, x0 + x]
            e1 = np.exp(min(max(z[1, y0 + y, x0 + x] - a, -lim), lim))
            e2 = np.exp(min(max(z[2, y0 + y, x0 + x] - a, -lim), lim))
            p0 = one / (one + e1 + e2)
            out[0, y, x] = p0
            out[1, y, x] = e1 * p0
            out[2, y, x] = e2 * p0


def _clear_impl(flat):
    # flat[:] = 0 (parallel where compiled so: an image-sized np.zeros is one thread's
    # memset)
    z = flat.dtype.type(0)
    for i in prange(flat.size):
        flat[i] = z


def _lut_gather_impl(labels, lut, out):
    # out = lut[labels] (1-D views; parallel where compiled so)
    for i in prange(labels.size):
        out[i] = lut[labels[i]]


def _label_sums_impl(labels, img, area, sums):
    # pixel count and intensity sum per label, one pass (1-D views)
    for i in range(labels.size):
        lab = labels[i]
        area[lab] += 1
        sums[lab] += img[i]


def _core_split_impl(hi_lab, core_lab, n_hi, n_core, min_area, out):
    # out (bool, 1-D views): the seed mask hi_lab > 0 with every region that holds two
    # or more cores of >= min_area px replaced by those cores (learned._seeds)
    area = np.zeros(n_core + 1, np.int64)
    region = np.zeros(n_core + 1, np.int64)
    for i in range(hi_lab.size):
        c = core_lab[i]
        if c > 0:
            area[c] += 1
            region[c] = hi_lab[i]
    n_big = np.zeros(n_hi + 1, np.int64)
    for c in range(1, n_core + 1):
        if area[c] >= min_area:
            n_big[region[c]] += 1
    for i in range(hi_lab.size):
        r = hi_lab[i]
        if r == 0:
            out[i] = False
        elif n_big[r] >= 2:
            c = core_lab[i]
            out[i] = c > 0 and area[c] >= min_area
        else:
            out[i] = True


def _orphan_cores_impl(cc, peaks, wpeaks, mask, wmask, cores, nseeds, has_seed, seed_cc):
    # _split's partition set-up (1-D views; cores is modified in place): has_seed[c] for
    # components holding a peak; mask pixels of the other components become one core
    # each (id c + nseeds); seed_cc[core] = its component. Peaks and cores lie in the
    # mask: only the set pixels of ``peaks`` and ``mask`` are visited (``w*``: the masks
    # as uint64 words, zero words skipped). Parallel where compiled so (concurrent
    # writes to has_seed and seed_cc store the same value).
    n = cc.size
    for k in prange(CHUNKS):
        start, end = _word_chunk(n, k)
        jend = (end + 7) // 8
        j = _next_word(wpeaks, start // 8, jend)
        while j < jend:
            for jt in range(8):  # (a constant trip count: unrolled)
                i = 8 * j + jt
                if i < start:
                    continue
                if i >= end:
                    break
                if peaks[i]:
                    has_seed[cc[i]] = True
            j = _next_word(wpeaks, j + 1, jend)
    for k in prange(CHUNKS):
        start, end = _word_chunk(n, k)
        jend = (end + 7) // 8
        j = _next_word(wmask, start // 8, jend)
        while j < jend:
            for jt in range(8):  # (a constant trip count: unrolled)
                i = 8 * j + jt
                if i < start:
                    continue
                if i >= end:
                    break
                if mask[i]:
                    c = cc[i]
                    if not has_seed[c]:
                        cores[i] = c + nseeds
                    q = cores[i]
                    if q > 0:
                        seed_cc[q] = c
            j = _next_word(wmask, j + 1, jend)


def _owned_impl(owner, cc, seed_cc, allowed, mask, wmask, has_seed, cores, orphans,
                smooth, want_peak, peak, out, clear):
    # out = owner where allowed and the owner's component is the pixel's, else 0; with
    # ``orphans`` the seedless components' pixels take their core; with ``want_peak``
    # peak[label] = max(0, max of smooth over the label) for labels > 0 (1-D views).
    # ``allowed`` lies in ``mask``: only mask pixels are computed (``wmask``: the mask as
    # uint64 words); with ``clear`` the others are written 0 (past zero words eight
    # at a time), else left as they are (``out`` may be ``owner`` itself: each pixel
    # reads only its own). CHUNKS chunks (parallel where compiled so), each with its own
    # peaks, then their maximum.
    n = owner.size
    part = np.zeros((CHUNKS if want_peak else 1, peak.size), peak.dtype)
    for k in prange(CHUNKS):
        start, end = _word_chunk(n, k)
        jend = (end + 7) // 8
        j0 = start // 8
        while True:
            j = _next_word(wmask, j0, jend)
            if clear:  # (the zero words passed: off the mask)
                for i in range(max(start, 8 * j0), min(end, 8 * j)):
                    out[i] = 0
            if j >= jend:
                break
            for jt in range(8):  # (a constant trip count: unrolled)
                i = 8 * j + jt
                if i < start:
                    continue
                if i >= end:
                    break
                if not mask[i]:
                    if clear:
                        out[i] = 0
                    continue
                o = owner[i]
                c = cc[i]
                v = 0
                if allowed[i] and seed_cc[o] == c:
                    v = o
                if orphans and not has_seed[c]:
                    v = cores[i]
                out[i] = v
                if want_peak and v > 0:
                    s = smooth[i]
                    if s > part[k, v]:
                        part[k, v] = s
            j0 = j + 1
    if want_peak:
        for k in range(CHUNKS):
            for j in range(1, peak.size):
                if part[k, j] > peak[j]:
                    peak[j] = part[k, j]


def _rim_stats_impl(labels, owner, mask, near, wnear, smooth, t, contrast, own_peak,
                    do_rim, area, total, width, boxes):
    # _split's rim re-admission and per-label pixel count, intensity sum and bounding
    # box (1-D views of images ``width`` px wide; t and contrast float32 like the array
    # path). ``labels`` holds the objects on ``mask`` and is written on the band (near,
    # not mask): the rim rule's owner or 0 (it may be ``owner`` itself, each pixel
    # read before it is written). Labels lie in ``near``: only its set pixels
    # (``wnear``: uint64 words) are visited, for the rim rule and the objects' sums and
    # boxes (the background's, label 0, are not counted). ``boxes`` (labels × (min y,
    # min x, max y + 1, max x + 1)) starts as (H, W, 0, 0), :func:`_label_bbox_impl`'s.
    # CHUNKS chunks (parallel where compiled so), each with its own sums (each label's
    # in pixel order) and boxes, then added in chunk order: the same sums for any
    # thread count.
    n = labels.size
    pa = np.zeros((CHUNKS, area.size), area.dtype)
    pt = np.zeros((CHUNKS, total.size), total.dtype)
    pb = np.empty((CHUNKS, boxes.shape[0], 4), boxes.dtype)
    for k in prange(CHUNKS):
        b = pb[k]
        b[:, :] = boxes
        start, end = _word_chunk(n, k)
        y = start // width  # the row of the pixels visited, advanced as they go
        row_end = (y + 1) * width
        jend = (end + 7) // 8
        j = _next_word(wnear, start // 8, jend)
        while j < jend:
            for jt in range(8):  # (a constant trip count: unrolled)
                i = 8 * j + jt
                if i < start:
                    continue
                if i >= end:
                    break
                if not near[i]:
                    continue
                s = smooth[i]
                if mask[i]:
                    v = labels[i]
                else:  # the band: its label written here (``labels`` may be ``owner``)
                    v = 0
                    if do_rim:
                        o = owner[i]
                        if s > t and s > contrast * own_peak[o]:
                            v = o
                    labels[i] = v
                if v > 0:
                    pa[k, v] += 1
                    pt[k, v] += s
                    while i >= row_end:
                        y += 1
                        row_end += width
                    _box_take(b, v, y, i - (row_end - width))
            j = _next_word(wnear, j + 1, jend)
    for k in range(CHUNKS):
        for j in range(area.size):
            area[j] += pa[k, j]
            total[j] += pt[k, j]
    _box_merge(boxes, pb)


def _fill_holes_impl(lab, n, max_area, mask, out):
    # out = mask | (background region of ``lab`` (2-D, 0..n-1, 0 = the mask) that
    # touches no image border and, with max_area >= 0, has <= max_area pixels)
    Y, X = lab.shape
    keep = np.zeros(n, np.bool_)
    for x in range(X):
        keep[lab[0, x]] = True
        keep[lab[Y - 1, x]] = True
    for y in range(Y):
        keep[lab[y, 0]] = True
        keep[lab[y, X - 1]] = True
    if max_area >= 0:
        count = np.zeros(n, np.int64)
        for y in range(Y):
            for x in range(X):
                count[lab[y, x]] += 1
        for k in range(n):
            if count[k] > max_area:
                keep[k] = True
    keep[0] = True
    for y in range(Y):
        for x in range(X):
            out[y, x] = mask[y, x] or not keep[lab[y, x]]


def _gap_flood(st, wi, state, Y, X, i, lo, hi, mark, buf):
    """Flood (4-connected) the gap pixels (``wi`` and not ``st``, flat views) from flat
    index i through the rows [lo, hi), marking them ``mark`` in ``state`` (pixels
    marked ``mark`` already are not taken again); the region's flat indices go to
    ``buf``. Returns (count, closed, crossed): closed where no pixel lies on the image
    border or beside a pixel outside ``wi``; crossed where a gap pixel outside the rows
    was met (the region goes on beyond them: not complete)."""
    state[i] = mark
    buf[0] = i
    head = 0
    tail = 1
    closed = True
    crossed = False
    while head < tail:
        p = buf[head]
        head += 1
        py = p // X
        px = p - py * X
        edge = py == 0 or py == Y - 1 or px == 0 or px == X - 1
        if edge:
            closed = False
        for d in range(4):
            if edge and ((d == 0 and py == 0) or (d == 1 and py == Y - 1)
                         or (d == 2 and px == 0) or (d == 3 and px == X - 1)):
                continue
            q = p - X if d == 0 else (p + X if d == 1 else (p - 1 if d == 2 else p + 1))
            if st[q]:
                continue
            if not wi[q]:
                closed = False
                continue
            qy = py - 1 if d == 0 else (py + 1 if d == 1 else py)
            if qy < lo or qy >= hi:
                crossed = True
                continue
            if state[q] == mark:
                continue
            state[q] = mark
            buf[tail] = q
            tail += 1
    return tail, closed, crossed


def _fill_gaps_impl(strict, within, words_w, max_area, out, nstrips):
    # out = strict | the 4-connected regions of (within & ~strict) that touch neither the
    # image border nor a pixel outside ``within``, of at most max_area pixels (any size
    # when max_area < 0): where ``within`` contains ``strict`` and has no holes, exactly
    # the holes of ``strict`` (kernels.fill_holes). Cost ~ ``within`` read 8 pixels at a
    # time (``words_w``: its first size // 8 bytes viewed as uint64) plus the gap pixels
    # flooded, instead of labelling the whole background. The rows in ``nstrips``
    # horizontal strips (in parallel where compiled so), each flooding the regions that
    # stay inside it; the few that cross a strip's edge are flooded whole afterwards,
    # in order: the same result for any count.
    # (``out`` holds a copy of ``strict`` on entry)
    Y, X = strict.shape
    st = strict.ravel()
    wi = within.ravel()
    of = out.ravel()
    state = np.zeros(Y * X, np.uint8)  # 1: flooded in a strip, 2: flooded whole
    h = (Y + nstrips - 1) // nstrips
    # per strip: its crossing regions' first pixels (from the strip's first index on)
    cross = np.empty(Y * X, np.int64)  # (pages touched only as used)
    ncross = np.zeros(nstrips, np.int64)
    for k in prange(nstrips):
        lo = min(Y, k * h)
        hi = min(Y, lo + h)
        start = lo * X
        end = hi * X
        buf = np.empty(end - start, np.int64)  # the flood's queue, then its region
        nc = 0
        jend = (end + 7) // 8
        j = _next_word(words_w, start // 8, jend)
        while j < jend:
            for jt in range(8):  # (a constant trip count: unrolled)
                i = 8 * j + jt
                if i < start:
                    continue
                if i >= end:
                    break
                if not wi[i] or st[i] or state[i] != 0:
                    continue
                tail, closed, crossed = _gap_flood(st, wi, state, Y, X, i, lo, hi, 1, buf)
                if crossed:
                    cross[start + nc] = i
                    nc += 1
                elif closed and (max_area < 0 or tail <= max_area):
                    for m in range(tail):
                        of[buf[m]] = True
            j = _next_word(words_w, j + 1, jend)
        ncross[k] = nc
    buf = np.empty(0, np.int64)
    for k in range(nstrips):
        start = min(Y, k * h) * X
        for c in range(ncross[k]):
            i = cross[start + c]
            if state[i] == 2:  # (flooded whole from another strip's part)
                continue
            if buf.size == 0:
                buf = np.empty(Y * X, np.int64)
            tail, closed, crossed = _gap_flood(st, wi, state, Y, X, i, 0, Y, 2, buf)
            if closed and (max_area < 0 or tail <= max_area):
                for m in range(tail):
                    of[buf[m]] = True


def _box_flood(lab, k, y0, x0, h, w, seen, by, bx):
    # flood (4-connected) from the border of component k's box (y0, x0, h, w) through
    # the box's pixels that are not k; marks them in ``seen`` (h * w, all False on
    # entry) and returns how many it reached (``by``, ``bx``: the queue)
    tail = 0
    for yy in range(h):  # the box's border pixels that are not the component
        step = 1 if (yy == 0 or yy == h - 1) else w - 1
        for xx in range(0, w, step):
            if lab[y0 + yy, x0 + xx] != k:
                seen[yy * w + xx] = True
                by[tail] = yy
                bx[tail] = xx
                tail += 1
    head = 0
    while head < tail:
        py = by[head]
        px = bx[head]
        head += 1
        for d in range(4):
            qy = py + (-1 if d == 0 else (1 if d == 1 else 0))
            qx = px + (-1 if d == 2 else (1 if d == 3 else 0))
            if qy < 0 or qy >= h or qx < 0 or qx >= w:
                continue
            q = qy * w + qx
            if seen[q] or lab[y0 + qy, x0 + qx] == k:
                continue
            seen[q] = True
            by[tail] = qy
            bx[tail] = qx
            tail += 1
    return tail


def _uf_find(parent, i):
    # union-find root of element i (path halving)
    while parent[i] != i:
        parent[i] = parent[parent[i]]
        i = parent[i]
    return i


def _uf_union(parent, a, b):
    # join the sets of a and b under the smaller root (the earlier element): the root
    # of a set is then its first element
    ra = _uf_find(parent, a)
    rb = _uf_find(parent, b)
    if ra < rb:
        parent[rb] = ra
    elif rb < ra:
        parent[ra] = rb


def _run_components_impl(mask, words, nstrips, lab):
    """The 8-connected components of a 2-D bool ``mask`` (``words``: its flat bytes as
    uint64, zero where eight pixels are background) numbered in the raster order of
    their first pixels, from its runs: each row's runs of set pixels listed (horizontal
    strips in parallel where compiled so, past the background eight pixels at a time),
    the runs of consecutive rows that touch (8-connected) joined by union-find, the
    root of a component its first run, then the runs painted into ``lab`` (int32, every
    pixel written; rows in parallel). Returns (n, area, bb): each label's pixel count
    and bounding box (y0, x0, y1, x1 inclusive) in rows 1..n (row 0: 0 and (Y, X, -1,
    -1); rows past n unused)."""
    Y, X = mask.shape
    flat = mask.ravel()
    h = (Y + nstrips - 1) // nstrips
    # a row holds at most (X + 1) // 2 runs: each strip lists its runs one after the
    # other from its first row's slot on (pages touched only as used)
    cap = (X + 1) // 2
    r0 = np.empty(Y * cap, np.int32)
    r1 = np.empty(Y * cap, np.int32)
    rown = np.zeros(Y, np.int64)  # runs per row
    rowpos = np.zeros(Y, np.int64)  # where each row's runs start in r0, r1
    for k in prange(nstrips):
        slot = min(Y, k * h) * cap
        for y in range(min(Y, k * h), min(Y, k * h + h)):
            base = y * X
            rowpos[y] = slot
            n = 0
            x = 0
            while x < X:
                if ((base + x) & 7) == 0:  # past zero words in a tight loop
                    while x + 8 <= X and words[(base + x) >> 3] == np.uint64(0):
                        x += 8
                    if x >= X:
                        break
                i = base + x
                if not flat[i]:
                    x += 1
                    continue
                start = x
                x += 1
                while x < X and flat[base + x]:
                    x += 1
                r0[slot + n] = start
                r1[slot + n] = x  # (exclusive)
                n += 1
            rown[y] = n
            slot += n
    first = np.empty(Y + 1, np.int64)  # each row's first run in the list
    first[0] = 0
    for y in range(Y):
        first[y + 1] = first[y] + rown[y]
    R = first[Y]
    ry = np.empty(R, np.int32)
    a0 = np.empty(R, np.int32)
    a1 = np.empty(R, np.int32)
    for y in prange(Y):  # the runs in one raster-ordered list
        j = first[y]
        for t in range(rown[y]):
            ry[j + t] = y
            a0[j + t] = r0[rowpos[y] + t]
            a1[j + t] = r1[rowpos[y] + t]
    parent = np.arange(R)
    for y in range(1, Y):  # runs of consecutive rows that touch (8-connected)
        i, ie = first[y - 1], first[y]
        j, je = first[y], first[y + 1]
        while i < ie and j < je:
            if a0[i] <= a1[j] and a0[j] <= a1[i]:
                _uf_union(parent, i, j)
            if a1[i] < a1[j]:
                i += 1
            else:
                j += 1
    comp = np.empty(R, np.int32)
    area = np.empty(R + 1, np.int64)
    bb = np.empty((R + 1, 4), np.int64)
    n = 0
    area[0] = 0
    bb[0, 0], bb[0, 1], bb[0, 2], bb[0, 3] = Y, X, -1, -1
    for r in range(R):  # roots first in raster order: ids in the order of first pixels
        root = _uf_find(parent, r)
        if root == r:
            n += 1
            comp[r] = n
            area[n] = 0
            bb[n, 0], bb[n, 1], bb[n, 2], bb[n, 3] = ry[r], X, ry[r], -1
        else:
            comp[r] = comp[root]
        c = comp[r]
        area[c] += a1[r] - a0[r]
        bb[c, 1] = min(bb[c, 1], a0[r])
        bb[c, 2] = ry[r]
        bb[c, 3] = max(bb[c, 3], a1[r] - 1)
    for y in prange(Y):  # paint
        row = lab[y]
        for x in range(X):
            row[x] = 0
        for t in range(first[y], first[y + 1]):
            c = comp[t]
            for x in range(a0[t], a1[t]):
                row[x] = c
    return n, area, bb


def _fill_labelled_impl(lab, n, bb, area, mask, out):
    # lab: the 8-connected components of ``mask`` numbered 1..n (2-D int32), with their
    # bounding boxes ``bb`` (y0, x0, y1, x1 inclusive) and pixel counts ``area``
    # (_run_components_impl; ``area`` is updated). Fills each component's holes
    # (the 4-connected regions of other pixels inside its bounding box that no flood from
    # the box's border reaches: pixels it encloses) with its id in ``lab`` and True in
    # ``out`` (= mask | holes, kernels.fill_holes exactly). Cost ~ the components'
    # bounding boxes, not the background. Returns False when a hole held another
    # component (nested objects, merged by the fill: the caller relabels ``out``).
    # (``out`` holds a copy of ``mask`` on entry)
    # First every component's flood (components in parallel where compiled so); a
    # component whose holes hold background only is filled there and then; those whose
    # holes hold another component (nested), in order, are flooded again and filled.
    # A background pixel lies in the holes of one component at most (its background
    # region would be bounded by two components' pixels at once), and filling it
    # changes no other flood (any id but the flooding one's is passable) nor any other
    # nested test (a hole around it holds the filler's pixels too). A nested fill only
    # turns a nested component's pixels into the filling one's, which can take holes
    # from a later component but never give it any: the same result as filling every
    # component in order (with nesting, the same filled mask, which the caller labels).
    holed = np.zeros(n + 1, np.bool_)
    for k in prange(1, n + 1):
        y0 = bb[k, 0]
        x0 = bb[k, 1]
        h = bb[k, 2] - y0 + 1
        w = bb[k, 3] - x0 + 1
        if h < 3 or w < 3:  # nothing to enclose
            continue
        others = h * w - area[k]
        if others == 0:
            continue
        seen = np.zeros(h * w, np.bool_)
        by = np.empty(others, np.int32)  # the flood's queue (box coordinates)
        bx = np.empty(others, np.int32)
        if _box_flood(lab, k, y0, x0, h, w, seen, by, bx) == others:
            continue
        nested = False
        for yy in range(h):
            for xx in range(w):
                j = lab[y0 + yy, x0 + xx]
                if j != k and j != 0 and not seen[yy * w + xx]:
                    nested = True
                    break
            if nested:
                break
        if nested:
            holed[k] = True
            continue
        filled = 0
        for yy in range(h):
            for xx in range(w):
                if lab[y0 + yy, x0 + xx] == 0 and not seen[yy * w + xx]:
                    lab[y0 + yy, x0 + xx] = k
                    out[y0 + yy, x0 + xx] = True
                    filled += 1
        area[k] += filled
    ok = True
    for k in range(1, n + 1):
        if not holed[k]:
            continue
        y0 = bb[k, 0]
        x0 = bb[k, 1]
        h = bb[k, 2] - y0 + 1
        w = bb[k, 3] - x0 + 1
        others = h * w - area[k]
        if others == 0:
            continue
        seen = np.zeros(h * w, np.bool_)
        by = np.empty(others, np.int32)
        bx = np.empty(others, np.int32)
        if _box_flood(lab, k, y0, x0, h, w, seen, by, bx) == others:
            continue  # (its holes went to an earlier component's fill)
        for yy in range(h):
            for xx in range(w):
                j = lab[y0 + yy, x0 + xx]
                if j != k and not seen[yy * w + xx]:
                    if j != 0:  # a nested component: merged into this one
                        ok = False
                        area[j] -= 1
                    area[k] += 1
                    lab[y0 + yy, x0 + xx] = k
                    out[y0 + yy, x0 + xx] = True
    return ok


def _nearest_within_impl(seeds, R, edges, out, nstrips):
    # out = seeds where > 0; else the id of the nearest seed pixel (exact Euclidean; ties
    # to the first boundary pixel in scan order) where that distance is <= R; else 0.
    # Only seed pixels with a non-seed 4-neighbour paint (``edges``: their flat indices,
    # ascending, _seed_edges_impl), and each only the part of its disc it can be nearest
    # to: a
    # pixel q = p + (dy, dx) with dy > 0 has the seed pixel p + (1, 0), where there is
    # one, strictly nearer than p (and likewise for dy < 0, dx > 0, dx < 0), so p paints
    # rows below it only where p + (1, 0) is not a seed, and so on: a pixel on a straight
    # edge paints one ray, a corner a quadrant (one with only diagonal non-seed
    # neighbours would paint nothing: it is not listed). What is left out is never
    # nearest nor tied: the same result as painting whole discs from every seed pixel
    # with a non-seed 8-neighbour. 2-D arrays. Painted in ``nstrips`` horizontal strips
    # (parallel where compiled so), each cleared and painted by the boundary pixels
    # within R of it in scan order: the same result for any count.
    Y, X = seeds.shape
    Ri = int(np.floor(R))
    R2 = R * R
    R2i = 0  # integer squared distances: d2 <= R2 exactly when d2 <= R2i
    while R2i + 1 <= R2:
        R2i += 1
    span = np.empty(Ri + 1, np.int64)  # the disc's half-width at each |dy|
    for dy in range(Ri + 1):
        w = 0
        while dy * dy + (w + 1) * (w + 1) <= R2i:
            w += 1
        span[dy] = w
    h = (Y + nstrips - 1) // nstrips
    for k in prange(nstrips):
        a = k * h
        b = min(Y, a + h)
        if a >= b:
            continue
        # squared distance of the painted seed pixel, read only where one was painted
        # (out > 0 off the seeds): never cleared
        best = np.empty((b - a, X), np.int32)
        for y in range(a, b):
            for x in range(X):
                s = seeds[y, x]
                out[y, x] = s if s > 0 else 0
        j0 = np.searchsorted(edges, max(0, a - Ri) * X)
        j1 = np.searchsorted(edges, min(Y, b + Ri) * X)
        for j in range(j0, j1):
            p = edges[j]
            y = p // X
            x = p - y * X
            s = seeds[y, x]
            # the directions p may be nearest in: toward a non-seed 4-neighbour
            up = y > 0 and seeds[y - 1, x] <= 0
            down = y < Y - 1 and seeds[y + 1, x] <= 0
            left = x > 0 and seeds[y, x - 1] <= 0
            right = x < X - 1 and seeds[y, x + 1] <= 0
            ylo = max(a, y - Ri) if up else max(a, y)
            yhi = min(b, y + Ri + 1) if down else min(b, y + 1)
            for yy in range(ylo, yhi):
                dy = yy - y
                dy2 = dy * dy
                w = span[dy if dy >= 0 else -dy]
                brow = best[yy - a]
                orow = out[yy]
                srow = seeds[yy]
                xlo = max(0, x - w) if left else x
                xhi = min(X, x + w + 1) if right else x + 1
                for xx in range(xlo, xhi):
                    d2 = dy2 + (xx - x) * (xx - x)
                    o = orow[xx]
                    if o == 0 or (srow[xx] <= 0 and d2 < brow[xx]):
                        brow[xx] = d2
                        orow[xx] = s


def _seam_resize_impl(small, interior, ri, ci, y0, y1, x0, x1, R, out):
    # out = small upsampled by nearest neighbour (out[y, x] = small[ri[y], ci[x]]), except
    # at seam pixels (small pixel labelled, with another non-zero label among its 8
    # neighbours): the label of the nearest output pixel whose
    # small pixel is interior (exact Euclidean; ties to the first in scan order) within
    # R px, where there is one. The candidates are the interior small pixels' blocks
    # (rows y0[s]..y1[s]-1, columns x0[s]..x1[s]-1): the nearest pixel of a block is
    # unique, so ~(2R/f + 2)^2 tests per seam pixel.
    # Output rows are independent: CHUNKS row chunks (parallel where compiled so), each
    # with its own small-row seam cache.
    Y, X = out.shape
    Ri = int(np.floor(R))
    R2 = np.float32(R * R)
    sY, sX = small.shape
    h = (Y + CHUNKS - 1) // CHUNKS
    for k in prange(CHUNKS):
        seams = np.zeros(sX, np.bool_)
        last = -1
        for y in range(k * h, min(Y, k * h + h)):
            sy = ri[y]
            for x in range(X):  # the plain gather (a loop the compiler vectorises)
                out[y, x] = small[sy, ci[x]]
            if sy != last:  # this small row's seam pixels
                last = sy
                for sx in range(sX):
                    lab = small[sy, sx]
                    seam = False
                    if lab != 0:
                        for yy in range(max(0, sy - 1), min(sY, sy + 2)):
                            for xx in range(max(0, sx - 1), min(sX, sx + 2)):
                                o = small[yy, xx]
                                if o != 0 and o != lab:
                                    seam = True
                    seams[sx] = seam
            sa = ri[max(0, y - Ri)]
            sb = ri[min(Y - 1, y + Ri)]
            for sx in range(sX):
                if not seams[sx]:
                    continue
                for x in range(x0[sx], x1[sx]):
                    v = small[sy, sx]
                    ca = ci[max(0, x - Ri)]
                    cb = ci[min(X - 1, x + Ri)]
                    best = R2 + np.float32(1.0)
                    by = Y
                    bx = X
                    for syy in range(sa, sb + 1):
                        if y1[syy] <= y0[syy]:
                            continue
                        ny = min(max(y, y0[syy]), y1[syy] - 1)
                        dy = ny - y
                        for sxx in range(ca, cb + 1):
                            if not interior[syy, sxx] or x1[sxx] <= x0[sxx]:
                                continue
                            nx = min(max(x, x0[sxx]), x1[sxx] - 1)
                            dx = nx - x
                            d2 = np.float32(dy * dy + dx * dx)
                            if d2 <= R2 and (d2 < best or (d2 == best and (
                                    ny < by or (ny == by and nx < bx)))):
                                best = d2
                                by = ny
                                bx = nx
                                v = small[syy, sxx]
                    out[y, x] = v


def _nearest_in_impl(seeds, roi, wroi, oy, ox, out, idx, unres):
    # out = for each ``roi`` pixel the id of the nearest seed pixel (exact Euclidean)
    # found by walking the offsets (oy, ox), sorted by squared length, until the first
    # seed pixel (ties: the first offset in that order); seed pixels keep theirs; 0
    # where no seed lies within the offsets, and off roi (every pixel of ``out`` is
    # written: ``wroi``, roi's flat bytes as uint64 words, skips eight pixels at a time
    # past the rest, zeroed). idx = the flat index of that seed pixel (-1 where none;
    # written on roi only). The flat indices of the roi pixels left without one go to
    # unres (raster order); returns their count. Rows run in parallel where compiled so.
    Y, X = seeds.shape
    n = oy.size
    left = np.zeros(Y, np.int64)
    # pixels at least the offsets' reach from every border walk flat offsets unchecked
    reach = 0
    for k in range(n):
        reach = max(reach, abs(oy[k]), abs(ox[k]))
    flat = seeds.ravel()
    off = np.empty(n, np.int64)
    for k in range(n):
        off[k] = oy[k] * X + ox[k]
    for y in prange(Y):
        r = y * X
        orow = out[y]
        srow = seeds[y]
        rrow = roi[y]
        irow = idx[y]
        for x in range(X):  # (cleared in one vectorised sweep, roi pixels then written)
            orow[x] = 0
        inner_row = y >= reach and y < Y - reach
        wend = (r + X + 7) // 8
        w = _next_word(wroi, r // 8, wend)
        while w < wend:
            for jt in range(8):  # (a constant trip count: unrolled)
                x = 8 * w + jt - r
                if x < 0:
                    continue
                if x >= X:
                    break
                if not rrow[x]:
                    continue
                s = srow[x]
                if s > 0:
                    orow[x] = s
                    irow[x] = r + x
                    continue
                v = 0
                j = -1
                if inner_row and x >= reach and x < X - reach:
                    i = r + x
                    for k in range(n):
                        s2 = flat[i + off[k]]
                        if s2 > 0:
                            v = s2
                            j = i + off[k]
                            break
                else:
                    for k in range(n):
                        yy = y + oy[k]
                        xx = x + ox[k]
                        if yy >= 0 and yy < Y and xx >= 0 and xx < X:
                            s2 = seeds[yy, xx]
                            if s2 > 0:
                                v = s2
                                j = yy * X + xx
                                break
                orow[x] = v
                irow[x] = j
                if j < 0:
                    left[y] += 1
            w = _next_word(wroi, w + 1, wend)
    nun = 0
    for y in range(Y):
        if left[y] == 0:
            continue
        for x in range(X):
            if roi[y, x] and idx[y, x] < 0:
                unres[nun] = y * X + x
                nun += 1
    return nun


def _propagate_in_impl(seeds, roi, out, idx, unres, max_iter):
    # the roi pixels the ring search left without a seed (unres: flat indices in
    # raster order) take the nearest of the seed pixels their 8-neighbours point to,
    # in forward and backward sweeps over them until nothing changes (vector
    # propagation inside roi: near-exact Euclidean); all other pixels are final
    Y, X = seeds.shape
    m = unres.size
    for _ in range(max_iter):
        changed = False
        for sweep in range(2):
            for t in range(m):
                i = unres[t] if sweep == 0 else unres[m - 1 - t]
                y = i // X
                x = i - y * X
                j = idx[y, x]
                best = 1 << 62
                if j >= 0:
                    jy = j // X
                    jx = j - jy * X
                    best = (y - jy) * (y - jy) + (x - jx) * (x - jx)
                bj = j
                for dy in range(-1, 2):
                    yy = y + dy
                    if yy < 0 or yy >= Y:
                        continue
                    for dx in range(-1, 2):
                        xx = x + dx
                        if xx < 0 or xx >= X or (dy == 0 and dx == 0) or not roi[yy, xx]:
                            continue
                        c = idx[yy, xx]
                        if c < 0 or c == bj:
                            continue
                        cy = c // X
                        cx = c - cy * X
                        d2 = (y - cy) * (y - cy) + (x - cx) * (x - cx)
                        if d2 < best:
                            best = d2
                            bj = c
                if bj != j:
                    idx[y, x] = bj
                    by = bj // X
                    out[y, x] = seeds[by, bj - by * X]
                    changed = True
        if not changed:
            break

def _edt_impl(mask, out, g):
    # exact Euclidean distance of each mask pixel to the nearest non-mask pixel (float32
    # out; 0 outside the mask; beyond the image border counts as mask, as in SciPy and
    # OpenCV; 2**64, OpenCV's figure, where the image holds no such pixel): vertical
    # distances g (scratch of the mask's shape, an integer type holding Y + X + 1:
    # int16 where it does, half the traffic of int32) in two row-order sweeps, then
    # per row the minimum of k² + g[x ± k]², scanning outwards until k² exceeds the
    # best (cost ~ object radius per pixel; exact like cv2.DIST_MASK_PRECISE and scipy)
    Y, X = mask.shape
    big = Y + X + 1
    # the sweeps in g's own type on row slices (with 2-D indices and int64 arithmetic
    # LLVM vectorised them 4 lanes wide at best: 5.7 against 0.7 ms at 2048², int16)
    T = g.dtype.type
    bigt, one, zero = T(big), T(1), T(0)
    w = 256  # column chunks (parallel where compiled so)
    for c in prange((X + w - 1) // w):
        x0 = c * w
        x1 = min(X, x0 + w)
        n = x1 - x0
        cur = g[0, x0:x1]
        mr = mask[0, x0:x1]
        for i in range(n):
            cur[i] = bigt if mr[i] else zero
        for y in range(1, Y):
            prev = g[y - 1, x0:x1]
            cur = g[y, x0:x1]
            mr = mask[y, x0:x1]
            for i in range(n):
                cur[i] = min(T(prev[i] + one), bigt) if mr[i] else zero
        for y in range(Y - 2, -1, -1):
            nxt = g[y + 1, x0:x1]
            cur = g[y, x0:x1]
            for i in range(n):
                cur[i] = min(cur[i], T(nxt[i] + one))
    inf = np.int64(1) << 40
    for y in prange(Y):
        row = g[y]
        for x in range(X):
            gx = row[x]
            if gx == 0:
                out[y, x] = 0.0
                continue
            best = inf if gx >= big else np.int64(gx) * gx
            k = 1
            while k * k < best:
                if x - k >= 0:
                    v = row[x - k]
                    if v < big:
                        c = k * k + np.int64(v) * v
                        if c < best:
                            best = c
                if x + k < X:
                    v = row[x + k]
                    if v < big:
                        c = k * k + np.int64(v) * v
                        if c < best:
                            best = c
                if x - k < 0 and x + k >= X:
                    break
                k += 1
            out[y, x] = np.float32(np.sqrt(np.float64(best))) if best < inf else np.float32(2.0 ** 64)


def _positive_impl(img, out):
    # out = img > 0 (2-D; rows in parallel where compiled so)
    Y, X = img.shape
    for y in prange(Y):
        a = img[y]
        o = out[y]
        for x in range(X):
            o[x] = a[x] > 0


def _mask_op_impl(a, b, c, op, out):
    # out = a & ~b (op 0), a | (b & c) (op 1): 2-D uint8 views of bool images (0 / 1),
    # rows in parallel where compiled so
    Y, X = a.shape
    one = np.uint8(1)
    for y in prange(Y):
        ra = a[y]
        rb = b[y]
        rc = c[y]
        o = out[y]
        if op == 0:
            for x in range(X):
                o[x] = ra[x] & (rb[x] ^ one)
        else:
            for x in range(X):
                o[x] = ra[x] | (rb[x] & rc[x])


def _to_float32_impl(img, out):
    # out = img cast to float32 (2-D; img may be a strided view)
    Y, X = img.shape
    for y in prange(Y):
        for x in range(X):
            out[y, x] = np.float32(img[y, x])


def _area_resize_impl(img, ys, yc, yw, xs, xc, xw, out):
    """out[i, k] = Σ_u xw[k, u] · Σ_t yw[i, t] · img[ys[i] + t, xs[k] + u] (area-weight
    taps, kernels._area_taps), in float32: per output row (parallel where compiled so)
    the weighted input rows summed into a row buffer (vectorised), then the columns'
    taps. ``img`` 2-D in any real type, read as it is."""
    Ys, Xs = out.shape
    X = img.shape[1]
    for i in prange(Ys):
        buf = np.zeros(X, np.float32)
        for t in range(yc[i]):
            w = yw[i, t]
            row = img[ys[i] + t]
            for x in range(X):
                buf[x] += w * np.float32(row[x])
        orow = out[i]
        for k in range(Xs):
            acc = np.float32(0.0)
            x0 = xs[k]
            for u in range(xc[k]):
                acc += xw[k, u] * buf[x0 + u]
            orow[k] = acc


def _block_mean_int_impl(img, f, scale, out):
    """out[i, j] = float32(Σ img over the f × f block at (i f, j f)) · scale, the sums
    exact integers (integer ``img`` whose block sums stay below 2**24: equal to
    OpenCV's INTER_AREA of the float32 copy, without that copy). Output rows in
    parallel, each from f input rows summed into an integer row buffer."""
    ny, nx = out.shape
    for i in prange(ny):
        acc = np.zeros(nx * f, np.float32)  # (integer sums < 2**24: exact in float32)
        for yy in range(i * f, i * f + f):
            row = img[yy]
            for x in range(nx * f):
                acc[x] += np.float32(row[x])
        orow = out[i]
        for j in range(nx):
            s = np.float32(0)
            for k in range(j * f, j * f + f):
                s += acc[k]
            orow[j] = s * scale


def _select(a, n, k):
    """The k-th smallest of a[:n] (0-based), a[:n] rearranged in place so that nothing
    after index k is smaller: quickselect with branch-free Lomuto partitions (random
    data mispredicts Hoare's branches) around median-of-three pivots; a range still
    open after 2 log2(n) + 8 rounds (many equal values) is sorted instead."""
    lo, hi = 0, n - 1
    rounds = 2 * int(np.log2(max(n, 2))) + 8
    while hi > lo:
        rounds -= 1
        if rounds < 0:
            a[lo:hi + 1] = np.sort(a[lo:hi + 1])
            break
        mid = (lo + hi) >> 1  # median of three → a[lo]
        if a[mid] < a[lo]:
            a[mid], a[lo] = a[lo], a[mid]
        if a[hi] < a[lo]:
            a[hi], a[lo] = a[lo], a[hi]
        if a[hi] < a[mid]:
            a[hi], a[mid] = a[mid], a[hi]
        a[lo], a[mid] = a[mid], a[lo]
        pivot = a[lo]
        i = lo + 1
        for j in range(lo + 1, hi + 1):  # a[lo + 1:i] < pivot <= a[i:j + 1]
            v = a[j]
            a[j] = a[i]
            a[i] = v
            i += v < pivot
        p = i - 1
        a[lo], a[p] = a[p], pivot
        if k == p:
            break
        if k < p:
            hi = p - 1
        else:
            lo = p + 1
    return a[k]


def _tile_quantile_impl(src, occ, ts, quantile, min_frac, grid, ok):
    """Per ``ts`` × ``ts`` tile of ``src`` (a 2-D image, any real dtype, read as
    float32): the ``quantile`` of its finite pixels outside ``occ``, linearly
    interpolated between order statistics in float64 (``grid``), and whether at least
    max(1, min_frac × the tile's pixels) of them exist (``ok``); tiles of the grid's
    shape, the last row/column of tiles partial. The same values as
    :func:`erquant.measure._tile_quantile`'s sort of the tiled image (order statistics
    do not depend on the sort). Tiles in parallel."""
    Ys, Xs = src.shape
    ny, nx = grid.shape
    for i in prange(ny * nx):
        ty, tx = i // nx, i % nx
        buf = np.empty(ts * ts, np.float32)
        k = 0
        y1, x1 = min(Ys, ty * ts + ts), min(Xs, tx * ts + ts)
        for y in range(ty * ts, y1):
            srow = src[y]
            orow = occ[y]
            for x in range(tx * ts, x1):  # (branch-free: written, counted if valid)
                v = np.float32(srow[x])
                buf[k] = v
                k += (not orow[x]) & np.isfinite(v)
        n_inside = max(0, y1 - ty * ts) * max(0, x1 - tx * ts)
        last = max(k - 1, 0)
        pos = quantile * np.float64(last)
        lo = int(np.floor(pos))
        hi = min(lo + 1, last)
        frac = pos - lo
        v_lo = 0.0
        v_hi = 0.0
        if k > 0:  # the two order statistics: a selection, then the minimum above it
            v_lo = np.float64(_select(buf, k, lo))
            v_hi = v_lo
            if hi > lo:
                m = buf[lo + 1]
                for j in range(lo + 2, k):
                    m = min(m, buf[j])
                v_hi = np.float64(m)
        grid[ty, tx] = v_lo + (v_hi - v_lo) * frac
        ok[ty, tx] = k > 0 and k >= max(1.0, min_frac * n_inside)


def _sub_scaled_impl(img, bg, scale, offset):
    # img = (img - scale * bg) - offset, in place, in float32 (2-D, rows in parallel)
    Y, X = img.shape
    for y in prange(Y):
        for x in range(X):
            img[y, x] = (img[y, x] - scale * bg[y, x]) - offset


def _ring_row(i, m):
    # the row of a ring of m rows holding image row i (m 0: the image itself)
    return i % m if m else i


def _blur_row(a, Y, m, y, w, tmp, out):
    """Row ``y`` of the Gaussian blur of ``_pre(a)`` by the symmetric kernel ``w`` (odd
    length 2r + 1) into ``out`` (tmp: X + 2r floats), borders reflected: the column
    pass into the padded row buffer, then the row pass, each as w[r] · centre +
    Σ w[r + k] · (left + right), k = 1..r in order, over whole rows (SIMD): up to
    four k per sweep of the row (the same float32 operations in the same order as
    one k per sweep, with a quarter of the row buffer's loads and stores). ``Y``: the
    image's height; ``m`` 0: ``a`` is the image; else a ring of ``m`` rows holding
    image row i in row i % m (:func:`_gaussian_impl`'s transformed rows)."""
    X = a.shape[1]
    r = (w.size - 1) // 2
    acc = tmp[r:r + X]
    row = a[_ring_row(y, m)]
    wc = w[r]
    # the column pass: the centre and k = 1..min(r, 4), then four k at a time
    n = min(r, 4)
    ra1 = a[_ring_row(_reflect(y - 1, Y), m)] if n >= 1 else row
    rb1 = a[_ring_row(_reflect(y + 1, Y), m)] if n >= 1 else row
    ra2 = a[_ring_row(_reflect(y - 2, Y), m)] if n >= 2 else row
    rb2 = a[_ring_row(_reflect(y + 2, Y), m)] if n >= 2 else row
    ra3 = a[_ring_row(_reflect(y - 3, Y), m)] if n >= 3 else row
    rb3 = a[_ring_row(_reflect(y + 3, Y), m)] if n >= 3 else row
    ra4 = a[_ring_row(_reflect(y - 4, Y), m)] if n >= 4 else row
    rb4 = a[_ring_row(_reflect(y + 4, Y), m)] if n >= 4 else row
    w1 = w[r + 1] if n >= 1 else wc
    w2 = w[r + 2] if n >= 2 else wc
    w3 = w[r + 3] if n >= 3 else wc
    w4 = w[r + 4] if n >= 4 else wc
    if n == 0:
        for x in range(X):
            acc[x] = wc * row[x]
    elif n == 1:
        for x in range(X):
            acc[x] = (wc * row[x]
                      + w1 * (ra1[x] + rb1[x]))
    elif n == 2:
        for x in range(X):
            acc[x] = (wc * row[x]
                      + w1 * (ra1[x] + rb1[x])
                      + w2 * (ra2[x] + rb2[x]))
    elif n == 3:
        for x in range(X):
            acc[x] = (wc * row[x]
                      + w1 * (ra1[x] + rb1[x])
                      + w2 * (ra2[x] + rb2[x])
                      + w3 * (ra3[x] + rb3[x]))
    else:
        for x in range(X):
            acc[x] = (wc * row[x]
                      + w1 * (ra1[x] + rb1[x])
                      + w2 * (ra2[x] + rb2[x])
                      + w3 * (ra3[x] + rb3[x])
                      + w4 * (ra4[x] + rb4[x]))
    k = 5
    while k <= r:
        n = min(r - k + 1, 4)
        ra1 = a[_ring_row(_reflect(y - k, Y), m)]
        rb1 = a[_ring_row(_reflect(y + k, Y), m)]
        ra2 = a[_ring_row(_reflect(y - k - 1, Y), m)] if n >= 2 else ra1
        rb2 = a[_ring_row(_reflect(y + k + 1, Y), m)] if n >= 2 else rb1
        ra3 = a[_ring_row(_reflect(y - k - 2, Y), m)] if n >= 3 else ra1
        rb3 = a[_ring_row(_reflect(y + k + 2, Y), m)] if n >= 3 else rb1
        ra4 = a[_ring_row(_reflect(y - k - 3, Y), m)] if n >= 4 else ra1
        rb4 = a[_ring_row(_reflect(y + k + 3, Y), m)] if n >= 4 else rb1
        w1 = w[r + k]
        w2 = w[r + k + 1] if n >= 2 else w1
        w3 = w[r + k + 2] if n >= 3 else w1
        w4 = w[r + k + 3] if n >= 4 else w1
        if n == 1:
            for x in range(X):
                acc[x] = acc[x] + w1 * (ra1[x] + rb1[x])
        elif n == 2:
            for x in range(X):
                acc[x] = (acc[x] + w1 * (ra1[x] + rb1[x])
                          + w2 * (ra2[x] + rb2[x]))
        elif n == 3:
            for x in range(X):
                acc[x] = (acc[x] + w1 * (ra1[x] + rb1[x])
                          + w2 * (ra2[x] + rb2[x])
                          + w3 * (ra3[x] + rb3[x]))
        else:
            for x in range(X):
                acc[x] = (acc[x] + w1 * (ra1[x] + rb1[x])
                          + w2 * (ra2[x] + rb2[x])
                          + w3 * (ra3[x] + rb3[x])
                          + w4 * (ra4[x] + rb4[x]))
        k += n
    _pad_reflect(tmp, r, X)
    # the row pass, likewise
    _row_taps(tmp, w, r, X, out)


def _row_taps(tmp, w, r, X, out):
    # out = w[r] · tmp[r + x] + Σ_k w[r + k] · (tmp[r - k + x] + tmp[r + k + x]), k = 1..r
    # in order, up to four k per sweep (see _blur_row; slices, not offset indices, so
    # that the loops vectorise)
    wc = w[r]
    k = 1
    first = True
    while first or k <= r:
        n = min(r - k + 1, 4)
        ta1 = tmp[r - k:r - k + X]
        tb1 = tmp[r + k:r + k + X]
        ta2 = tmp[r - k - 1:r - k - 1 + X] if n >= 2 else ta1
        tb2 = tmp[r + k + 1:r + k + 1 + X] if n >= 2 else tb1
        ta3 = tmp[r - k - 2:r - k - 2 + X] if n >= 3 else ta1
        tb3 = tmp[r + k + 2:r + k + 2 + X] if n >= 3 else tb1
        ta4 = tmp[r - k - 3:r - k - 3 + X] if n >= 4 else ta1
        tb4 = tmp[r + k + 3:r + k + 3 + X] if n >= 4 else tb1
        tc = tmp[r:r + X]
        w1 = w[r + k] if n >= 1 else wc
        w2 = w[r + k + 1] if n >= 2 else wc
        w3 = w[r + k + 2] if n >= 3 else wc
        w4 = w[r + k + 3] if n >= 4 else wc
        if first:
            if n <= 0:
                for x in range(X):
                    out[x] = wc * tc[x]
            elif n == 1:
                for x in range(X):
                    out[x] = wc * tc[x] + w1 * (ta1[x] + tb1[x])
            elif n == 2:
                for x in range(X):
                    out[x] = (wc * tc[x] + w1 * (ta1[x] + tb1[x])
                              + w2 * (ta2[x] + tb2[x]))
            elif n == 3:
                for x in range(X):
                    out[x] = (wc * tc[x] + w1 * (ta1[x] + tb1[x])
                              + w2 * (ta2[x] + tb2[x])
                              + w3 * (ta3[x] + tb3[x]))
            else:
                for x in range(X):
                    out[x] = (wc * tc[x] + w1 * (ta1[x] + tb1[x])
                              + w2 * (ta2[x] + tb2[x])
                              + w3 * (ta3[x] + tb3[x])
                              + w4 * (ta4[x] + tb4[x]))
            first = False
        elif n == 1:
            for x in range(X):
                out[x] = out[x] + w1 * (ta1[x] + tb1[x])
        elif n == 2:
            for x in range(X):
                out[x] = (out[x] + w1 * (ta1[x] + tb1[x])
                          + w2 * (ta2[x] + tb2[x]))
        elif n == 3:
            for x in range(X):
                out[x] = (out[x] + w1 * (ta1[x] + tb1[x])
                          + w2 * (ta2[x] + tb2[x])
                          + w3 * (ta3[x] + tb3[x]))
        else:
            for x in range(X):
                out[x] = (out[x] + w1 * (ta1[x] + tb1[x])
                          + w2 * (ta2[x] + tb2[x])
                          + w3 * (ta3[x] + tb3[x])
                          + w4 * (ta4[x] + tb4[x]))
        k += max(n, 1)


_F32_0 = np.float32(0.0)


def _focus_energies_impl(f, w1, w2, w4):
    """:func:`_band_energies_impl` of the three blurs of float32 ``f`` by ``w1``, ``w2``,
    ``w4`` (radii <= min(f.shape)), each row blurred as it is summed: the same float32
    blurs (:func:`_blur_row`), differences and squares, the same float64 sums in the
    same order, without the three blurred images."""
    Y, X = f.shape
    h = (Y + CHUNKS - 1) // CHUNKS
    fine = np.zeros(CHUNKS, np.float64)
    coarse = np.zeros(CHUNKS, np.float64)
    for k in prange(CHUNKS):
        t1 = np.empty(X + w1.size - 1, np.float32)
        t2 = np.empty(X + w2.size - 1, np.float32)
        t4 = np.empty(X + w4.size - 1, np.float32)
        g1 = np.empty(X, np.float32)
        g2 = np.empty(X, np.float32)
        g4 = np.empty(X, np.float32)
        a = 0.0
        b = 0.0
        for y in range(k * h, min(Y, k * h + h)):
            _blur_row(f, Y, 0, y, w1, t1, g1)
            _blur_row(f, Y, 0, y, w2, t2, g2)
            _blur_row(f, Y, 0, y, w4, t4, g4)
            a, b = _band_row(g1, g2, g4, a, b)
        fine[k] = a
        coarse[k] = b
    return _in_order(fine), _in_order(coarse)


def _in_order(v):
    # Σ v, added in index order (the same sum on any thread count)
    t = 0.0
    for k in range(v.size):
        t += v[k]
    return t


def _band_row(g1, g2, g4, a, b):
    """(a + Σ (g1 - g2)², b + Σ (g2 - g4)²) over one row: float32 differences and
    squares added to float64 sums in order."""
    for x in range(g1.size):
        d1 = g1[x] - g2[x]
        d2 = g2[x] - g4[x]
        a += d1 * d1
        b += d2 * d2
    return a, b


def _band_energies_impl(g1, g2, g4):
    # (Σ (g1 - g2)², Σ (g2 - g4)²): float32 differences and squares, float64 sums, over
    # CHUNKS row chunks in parallel where compiled so, added in order
    Y, X = g1.shape
    h = (Y + CHUNKS - 1) // CHUNKS
    fine = np.zeros(CHUNKS, np.float64)
    coarse = np.zeros(CHUNKS, np.float64)
    for k in prange(CHUNKS):
        a = 0.0
        b = 0.0
        for y in range(k * h, min(Y, k * h + h)):
            a, b = _band_row(g1[y], g2[y], g4[y], a, b)
        fine[k] = a
        coarse[k] = b
    return _in_order(fine), _in_order(coarse)


def _excess_impl(img, t, out):
    # out = max(img - t, 0) in float32 (2-D, rows in parallel)
    Y, X = img.shape
    for y in prange(Y):
        for x in range(X):
            v = img[y, x] - t
            out[y, x] = v if v > 0 else np.float32(0.0)


def _add_scalar_impl(img, c):
    # img += c in place, float32 (2-D, rows in parallel)
    Y, X = img.shape
    for y in prange(Y):
        for x in range(X):
            img[y, x] += c


def _multiply_impl(a, b, out):
    # out = a * b (2-D float32, rows in parallel)
    Y, X = a.shape
    for y in prange(Y):
        for x in range(X):
            out[y, x] = a[y, x] * b[y, x]


def _affine_impl(img, offset, scale, out):
    # out = (img - offset) * scale in float32 (2-D; img may be a strided view)
    Y, X = img.shape
    for y in prange(Y):
        for x in range(X):
            out[y, x] = (img[y, x] - offset) * scale


def _mask_above_impl(mask, a, frac, b, out):
    # out = mask & (a > frac * b), float32 products as NumPy's (rows in parallel)
    Y, X = mask.shape
    for y in prange(Y):
        for x in range(X):
            out[y, x] = mask[y, x] and a[y, x] > frac * b[y, x]


def _pad_reflect(row, r, X):
    # the r cells either side of row[r:r + X] filled as OpenCV's BORDER_REFLECT (r <= X)
    for x in range(r):
        row[r - 1 - x] = row[r + x]
        row[X + r + x] = row[X + r - 1 - x]


def _pre(v, pre, c0, c1):
    # the Gaussian's input transform: 0 none, 1 (v - c0) · c1 (normalisation), 2
    # max(v - c0, 0) (excess over a threshold); float32 arithmetic as the array code's
    f = np.float32(v)
    if pre == 1:
        return (f - c0) * c1
    if pre == 2:
        return max(f - c0, np.float32(0.0))
    return f


def _gaussian_impl(a, w, pre, c0, c1, post, sd, p, out):
    """out = the Gaussian blur of ``_pre(a)`` by the symmetric separable kernel ``w``
    (odd length 2r + 1, r <= min(a.shape)), borders reflected: per row, the column pass
    into a padded row buffer, then the row pass, each as w[r] · centre + Σ w[r + k] ·
    (left + right) over whole rows (SIMD). ``post`` 1 (the seed map): out = sd ·
    (blur + 1e-6) ** p where sd > 0, else 0 (the power only where it is needed); 2
    (with ``pre`` 0): out = (blur - p · sd) - c0, :func:`_sub_scaled_impl`'s arithmetic.
    Rows in fixed chunks: the same result on any thread count."""
    Y, X = a.shape
    r = (w.size - 1) // 2
    eps = np.float32(1e-6)
    h = (Y + GAUSS_CHUNKS - 1) // GAUSS_CHUNKS
    for c in prange(GAUSS_CHUNKS):
        tmp = np.empty(X + 2 * r, np.float32)
        if pre != 0:
            # the transformed rows in a ring of 2r + 1 (row i in i % m), each row
            # transformed once per chunk, not once per tap (the same float32 values).
            # One output row reads 2r + 1 consecutive rows at most (reflected ones
            # among them): their slots are distinct, none it needs is overwritten.
            m = 2 * r + 1
            ring = np.empty((m, X), np.float32)
            tag = np.full(m, -1, np.int64)
        for y in range(c * h, min(Y, c * h + h)):
            orow = out[y]
            if pre != 0:
                for k in range(-r, r + 1):
                    i = _reflect(y + k, Y)
                    slot = _ring_row(i, m)
                    if tag[slot] != i:
                        tag[slot] = i
                        for x in range(X):
                            ring[slot, x] = _pre(a[i, x], pre, c0, c1)
                _blur_row(ring, Y, m, y, w, tmp, orow)
            else:
                _blur_row(a, Y, 0, y, w, tmp, orow)
            if post == 1:
                srow = sd[y]
                for x in range(X):
                    v = srow[x]
                    orow[x] = v * (orow[x] + eps) ** p if v > 0 else np.float32(0.0)
            elif post == 2:  # minus a scaled background and an offset (sub_scaled's)
                srow = sd[y]
                for x in range(X):
                    orow[x] = (orow[x] - p * srow[x]) - c0


def _clamp(i, hi):
    # i clipped to [0, hi] (the unused shifts of a short last sweep stay in bounds)
    return min(max(i, 0), hi)


def _row_at(i, n):
    # row i reflected into [0, n) (_reflect), clipped there for the unused shifts
    return _clamp(_reflect(i, n), n - 1)


def _max_sweep(dst, src, a1, b1, a2, b2, a3, b3, n):
    """dst = max(max(max(src, max(a1, b1)), max(a2, b2)), max(a3, b3)) elementwise, the
    first n <= 3 pairs (n < 1: a copy); ``src`` not ``dst`` (see :func:`_max_more`):
    one sweep of a row buffer for up to three row pairs, the same maxima taken one pair
    per sweep."""
    X = dst.size
    if n <= 0:
        for x in range(X):
            dst[x] = src[x]
    elif n == 1:
        for x in range(X):
            dst[x] = max(src[x], max(a1[x], b1[x]))
    elif n == 2:
        for x in range(X):
            dst[x] = max(max(src[x], max(a1[x], b1[x])), max(a2[x], b2[x]))
    else:
        for x in range(X):
            dst[x] = max(max(max(src[x], max(a1[x], b1[x])), max(a2[x], b2[x])),
                         max(a3[x], b3[x]))


def _max_more(dst, a1, b1, a2, b2, a3, b3, n):
    # _max_sweep with src = dst, in place (one array: its loops vectorise, where two
    # names for one array failed the vectoriser's overlap check at run time)
    X = dst.size
    if n == 1:
        for x in range(X):
            dst[x] = max(dst[x], max(a1[x], b1[x]))
    elif n == 2:
        for x in range(X):
            dst[x] = max(max(dst[x], max(a1[x], b1[x])), max(a2[x], b2[x]))
    elif n >= 3:
        for x in range(X):
            dst[x] = max(max(max(dst[x], max(a1[x], b1[x])), max(a2[x], b2[x])),
                         max(a3[x], b3[x]))


#: row pairs per sweep of the compiled maximum filter's row buffer (_max_sweep)
MAX_PAIRS = 3


def _max_filter_impl(a, r, mode, mask, frac, out, out_mask, thr):
    """The square maximum filter of half-width ``r`` (r <= min(a.shape)), borders
    reflected: per row, the column window's maximum into a padded row buffer, then the
    row window's, both as maxima of whole shifted rows (SIMD). ``mode`` 0: out = the
    filter; 1 (the local-contrast rule): out_mask = mask & (a > frac · filter); 2: the
    same with the mask a > thr taken as it goes; the filter never written in 1 and 2.
    Rows in fixed chunks (any thread count: the same result)."""
    Y, X = a.shape
    h = (Y + GAUSS_CHUNKS - 1) // GAUSS_CHUNKS
    for c in prange(GAUSS_CHUNKS):
        tmp = np.empty(X + 2 * r, a.dtype)
        acc = tmp[r:r + X]
        res = np.empty(X, a.dtype)
        for y in range(c * h, min(Y, c * h + h)):
            row = a[y]
            # the column window, up to MAX_PAIRS row pairs per sweep of the buffer
            n = min(r, MAX_PAIRS)
            _max_sweep(acc, row, a[_row_at(y - 1, Y)], a[_row_at(y + 1, Y)],
                       a[_row_at(y - 2, Y)], a[_row_at(y + 2, Y)],
                       a[_row_at(y - 3, Y)], a[_row_at(y + 3, Y)], n)
            k = n + 1
            while k <= r:
                n = min(r - k + 1, MAX_PAIRS)
                _max_more(acc, a[_row_at(y - k, Y)], a[_row_at(y + k, Y)],
                          a[_row_at(y - k - 1, Y)], a[_row_at(y + k + 1, Y)],
                          a[_row_at(y - k - 2, Y)], a[_row_at(y + k + 2, Y)], n)
                k += n
            _pad_reflect(tmp, r, X)
            dst = out[y] if mode == 0 else res
            # the row window, likewise over shifted slices of the padded buffer
            n = min(r, MAX_PAIRS)
            _max_sweep(dst, acc, tmp[_clamp(r - 1, 2 * r):_clamp(r - 1, 2 * r) + X],
                       tmp[_clamp(r + 1, 2 * r):_clamp(r + 1, 2 * r) + X],
                       tmp[_clamp(r - 2, 2 * r):_clamp(r - 2, 2 * r) + X],
                       tmp[_clamp(r + 2, 2 * r):_clamp(r + 2, 2 * r) + X],
                       tmp[_clamp(r - 3, 2 * r):_clamp(r - 3, 2 * r) + X],
                       tmp[_clamp(r + 3, 2 * r):_clamp(r + 3, 2 * r) + X], n)
            k = n + 1
            while k <= r:
                n = min(r - k + 1, MAX_PAIRS)
                _max_more(dst, tmp[_clamp(r - k, 2 * r):_clamp(r - k, 2 * r) + X],
                          tmp[_clamp(r + k, 2 * r):_clamp(r + k, 2 * r) + X],
                          tmp[_clamp(r - k - 1, 2 * r):_clamp(r - k - 1, 2 * r) + X],
                          tmp[_clamp(r + k + 1, 2 * r):_clamp(r + k + 1, 2 * r) + X],
                          tmp[_clamp(r - k - 2, 2 * r):_clamp(r - k - 2, 2 * r) + X],
                          tmp[_clamp(r + k + 2, 2 * r):_clamp(r + k + 2, 2 * r) + X], n)
                k += n
            if mode == 1:
                mrow = mask[y]
                orow = out_mask[y]
                for x in range(X):
                    orow[x] = mrow[x] and row[x] > frac * res[x]
            elif mode == 2:
                orow = out_mask[y]
                for x in range(X):
                    v = row[x]
                    orow[x] = (v > thr) & (v > frac * res[x])


#: row chunks of the compiled Gaussian (more than threads: balanced; fixed: the same
#: result on any thread count)
GAUSS_CHUNKS = 64


#: a parallel kernel whose arrays (the largest of its first three arguments) hold fewer
#: elements than this runs its serial twin: a threaded launch costs ~20-50 µs, the work
#: ~1-5 ns an element (the clump splitter's ~30² crops: the 8 px sweep field's
#: ``_split_oversized`` took 15-22 ms on 2 threads, 9.6 ms on one). 2**15 and 2**18
#: measured no better on the sweep fields (the diameter estimate's 380-640² crops
#: gain from both cores)
SERIAL_BELOW = 1 << 14


class _SizeDispatch:
    """A parallel kernel and its serial twin (the same code compiled without threads:
    the same results, which never depend on the thread count): calls with small
    arrays (:data:`SERIAL_BELOW`) take the twin."""

    def __init__(self, parallel, serial, fn):
        self.parallel, self.serial = parallel, serial
        self.__name__, self.__doc__, self.__wrapped__ = fn.__name__, fn.__doc__, fn

    def __call__(self, *args):
        n = 0
        for a in args[:3]:
            size = getattr(a, "size", 0)
            if size > n:
                n = size
        return (self.serial if n < SERIAL_BELOW else self.parallel)(*args)


def _njit(fn, opts):
    try:
        return numba.njit(cache=True, **opts)(fn)
    except RuntimeError:  # numba: "cannot cache function ...: no locator available"
        return numba.njit(cache=False, **opts)(fn)


def _jit(fn, parallel: bool = False, twin: bool = True):
    """Compile ``fn`` lazily, cached on disk where a cache folder is writable (next to
    this file, else numba's user-wide cache); without one (read-only install and home)
    it is compiled once per process instead of failing. ``parallel``: its ``prange``
    loops run threaded where :data:`PARALLEL` (serial loops otherwise), small calls
    serially (:class:`_SizeDispatch`) unless ``twin`` is False: the row-sweep kernels
    (the Gaussian, the maximum filter) compile to slower code without threads (60²:
    35 against 24 µs on one thread, 16 on two), so they stay threaded at any size."""
    opts = dict(nogil=True, boundscheck=False)
    if not (parallel and PARALLEL):
        return _njit(fn, opts)
    if not twin:
        return _njit(fn, dict(opts, parallel=True))
    # the twin: a copy under its own qualified name (numba's disk cache is keyed by
    # the name and signature, not by the compile options)
    twin = types.FunctionType(fn.__code__, fn.__globals__, fn.__name__ + "__serial",
                              fn.__defaults__, fn.__closure__)
    twin.__qualname__ = fn.__qualname__ + "__serial"
    twin.__module__ = fn.__module__
    return _SizeDispatch(_njit(fn, dict(opts, parallel=True)), _njit(twin, opts), fn)


if numba is not None:
    _slot = _jit(_slot)
    _moments = _jit(_moments_impl, parallel=True)
    relabel_foreground = _jit(_relabel_foreground_impl, parallel=True)
    interior = _jit(_interior_impl, parallel=True)
    paste_upsampled = _jit(_paste_upsampled_impl, parallel=True)
    gather2d = _jit(_gather2d_impl)
    scan_order_map = _jit(_scan_order_map_impl)
    present = _jit(_present_impl)
    _next_word = _jit(_next_word)
    _word_chunk = _jit(_word_chunk)
    _pre = _jit(_pre)
    _pad_reflect = _jit(_pad_reflect)
    _uf_find = _jit(_uf_find)
    _uf_union = _jit(_uf_union)
    run_components = _jit(_run_components_impl, parallel=True)
    _table_chunks = _jit(_table_chunks)
    range_count = _jit(_range_count_impl, parallel=True)
    scatter_max = _jit(_scatter_max_impl, parallel=True)
    _add_moments = _jit(_add_moments)
    shape_moments = _jit(_shape_moments_impl)
    object_stats = _jit(_object_stats_impl, parallel=True)
    _box_take = _jit(_box_take)
    _box_merge = _jit(_box_merge)
    label_bbox = _jit(_label_bbox_impl, parallel=True)
    box_moments = _jit(_box_moments_impl)
    seed_cores = _jit(_seed_cores_impl, parallel=True)
    seed_reach = _jit(_seed_reach_impl, parallel=True)
    nonzero = _jit(_nonzero_impl)
    label_sparse = _jit(_label_sparse_impl)
    seed_edges = _jit(_seed_edges_impl, parallel=True)
    _reflect = _jit(_reflect)
    valleys_cc = _jit(_valleys_cc_impl, parallel=True)
    label_area = _jit(_label_area_impl, parallel=True)
    histogram = _jit(_histogram_impl, parallel=True)
    _ext2 = _jit(_ext2)
    _ext3 = _jit(_ext3)
    _fold2 = _jit(_fold2)
    disc_morph = _jit(_disc_morph_impl, parallel=True)
    band_peaks = _jit(_band_peaks_impl, parallel=True)
    clump_maxima = _jit(_clump_maxima_impl, parallel=True)
    softmax3 = _jit(_softmax3_impl)
    lut_gather = _jit(_lut_gather_impl, parallel=True)
    clear = _jit(_clear_impl, parallel=True)
    label_sums = _jit(_label_sums_impl)
    core_split = _jit(_core_split_impl)
    orphan_cores = _jit(_orphan_cores_impl, parallel=True)
    owned = _jit(_owned_impl, parallel=True)
    rim_stats = _jit(_rim_stats_impl, parallel=True)
    fill_holes = _jit(_fill_holes_impl)
    _gap_flood = _jit(_gap_flood)
    fill_gaps = _jit(_fill_gaps_impl, parallel=True)
    _box_flood = _jit(_box_flood)
    fill_labelled = _jit(_fill_labelled_impl, parallel=True)
    nearest_within = _jit(_nearest_within_impl, parallel=True)
    nearest_in = _jit(_nearest_in_impl, parallel=True)
    edt = _jit(_edt_impl, parallel=True)
    mask_above = _jit(_mask_above_impl, parallel=True)
    gaussian = _jit(_gaussian_impl, parallel=True, twin=False)
    max_filter = _jit(_max_filter_impl, parallel=True, twin=False)
    affine = _jit(_affine_impl, parallel=True)
    sub_scaled = _jit(_sub_scaled_impl, parallel=True)
    excess = _jit(_excess_impl, parallel=True)
    band_energies = _jit(_band_energies_impl, parallel=True)
    _row_taps = _jit(_row_taps)
    _clamp = _jit(_clamp)
    _row_at = _jit(_row_at)
    _max_sweep = _jit(_max_sweep)
    _max_more = _jit(_max_more)
    _ring_row = _jit(_ring_row)
    _blur_row = _jit(_blur_row)
    _band_row = _jit(_band_row)
    _in_order = _jit(_in_order)
    focus_energies = _jit(_focus_energies_impl, parallel=True)
    add_scalar = _jit(_add_scalar_impl, parallel=True)
    multiply = _jit(_multiply_impl, parallel=True)
    to_float32 = _jit(_to_float32_impl, parallel=True)
    positive = _jit(_positive_impl, parallel=True)
    mask_op = _jit(_mask_op_impl, parallel=True)
    block_mean_int = _jit(_block_mean_int_impl, parallel=True)
    area_resize = _jit(_area_resize_impl, parallel=True)
    _select = _jit(_select)
    tile_quantile = _jit(_tile_quantile_impl, parallel=True)
    propagate_in = _jit(_propagate_in_impl)
    seam_resize = _jit(_seam_resize_impl, parallel=True)
else:  # pragma: no cover
    orphan_cores = owned = rim_stats = fill_holes = nearest_within = seam_resize = None
    fill_gaps = fill_labelled = None
    nearest_in = propagate_in = edt = mask_above = gaussian = max_filter = affine = to_float32 = sub_scaled = positive = mask_op = None
    block_mean_int = tile_quantile = area_resize = None
    excess = add_scalar = multiply = band_energies = focus_energies = None
    valleys_cc = label_area = disc_morph = None
    core_split = None
    softmax3 = None
    lut_gather = clear = None
    label_sums = None
    band_peaks = clump_maxima = None
    _moments = None
    relabel_foreground = interior = None
    paste_upsampled = None
    gather2d = None
    scan_order_map = None
    present = None
    run_components = None
    scatter_max = None
    shape_moments = object_stats = None
    label_bbox = None
    range_count = None
    seed_cores = seed_reach = nonzero = seed_edges = None


def moments(nuc: np.ndarray, cyt: np.ndarray, K: int, images: tuple,
            squared: np.ndarray, shifts: np.ndarray, nbins: int, maps: tuple = (),
            c0=None, c1=None, cw=None) -> np.ndarray:
    """See :func:`_moments_impl`; ``images`` a tuple of float (Y, X) arrays, ``maps``
    a tuple of float32 (Y, nx) row factors sharing the column factors c0, c1, cw."""
    nmaps = len(maps)
    rows = 3 + len(images) + int(np.count_nonzero(squared)) + nmaps
    # row chunks (fixed: 4, or fewer for tall tables), each with its own sums table
    nch = max(1, min(MOMENT_CHUNKS, nuc.shape[0] // 64, (1 << 24) // max(1, nbins * rows)))
    out = np.zeros((nch, nbins, rows), dtype=np.float64)
    X = nuc.shape[1]
    if nmaps == 0:  # Numba cannot type an empty tuple: a dummy that is never read
        maps = (np.zeros((1, 1), np.float32),)
        c0 = c1 = np.zeros(X, np.int64)
        cw = np.zeros(X, np.float32)
    c0 = np.asarray(c0, np.int64)
    # the maps' column weights as prefix sums (float64 of the float32 weights), and
    # where each piece of constant c0 (and c1) ends
    cws = np.zeros(X + 1, np.float64)
    np.cumsum(np.asarray(cw, np.float32).astype(np.float64), out=cws[1:])
    c1 = np.asarray(c1, np.int64)
    change = np.flatnonzero((c0[1:] != c0[:-1]) | (c1[1:] != c1[:-1])) + 1
    segend = np.repeat(np.append(change, X), np.diff(np.concatenate(([0], change, [X]))))
    _moments(nuc, cyt, K, images, squared, shifts, maps, nmaps, c0, c1, cws,
             segend.astype(np.int64), out)
    total = out[0]
    for k in range(1, out.shape[0]):  # in order: the same sums on any thread count
        total += out[k]
    return np.ascontiguousarray(total.T)
