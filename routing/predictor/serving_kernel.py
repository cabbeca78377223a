"""The one-request serving path's arithmetic in C: design rows and predictions without numpy's per-call cost.

ServingPlan.rows and ScopePredictor.predict run about a hundred numpy operations per request on
arrays of 2 to 60 elements; nearly all of their instructions are numpy's fixed cost per call. This
kernel does the same steps in three calls: the text side (TF-IDF weights, projection, heads and
their calibration, the top centroids), the design rows (assignment weights, anchor statistics,
request means) and the predictions from the trees' margins.

The results are numpy's to the bit, not merely close, because the kernel repeats numpy's own
operations: its matrix products call numpy's BLAS (cblas_sgemv/dgemv of the OpenBLAS numpy ships,
with the arguments numpy passes), its sums numpy's pairwise summation, 1 + log(count) comes from a
table numpy computed, and float32 exp (numpy's own SIMD code, not libm's) is left to one numpy call
between the first two. Float64 exp, expm1 and log1p are libm's, which is what numpy uses on CPUs
without AVX-512; the library is installed only after they gave numpy's results, and a plan uses
it only after its rows and predictions equalled the numpy path's on probe requests. Without a C
compiler, numpy's BLAS or agreement, the numpy path keeps serving; it also serves the requests the
kernel declines (a tie for the last of the top centroids, whose pick is numpy's argpartition's).
"""

from __future__ import annotations

import ctypes
import glob
import logging
import math
import struct
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from routing.engine.prior import expected_output_tokens
from routing.engine.types import Prediction
from routing.features import RequestFeatures
from routing.predictor.compiled import CompiledForest, ensure_kernel, install_kernel, library_path

if TYPE_CHECKING:
    from routing.predictor.model import ScopePredictor
    from routing.predictor.serving import CandidateLayout, ServingPlan

log = logging.getLogger(__name__)

SERVING_KERNEL_VERSION = 1
SERVING_KERNEL_SOURCE = r"""
#if defined(__GNUC__) && !defined(__clang__)
/* short copy loops (a gathered row of 2 heads) stay loops, not a call to memcpy each */
#pragma GCC optimize("no-tree-loop-distribute-patterns")
#endif
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* cblas_sgemv / cblas_dgemv of numpy's own BLAS (64-bit integers): the products are numpy's to the bit */
typedef void (*sgemv_fn)(int, int, int64_t, int64_t, float, const float *, int64_t, const float *,
                         int64_t, float, float *, int64_t);
typedef void (*dgemv_fn)(int, int, int64_t, int64_t, double, const double *, int64_t, const double *,
                         int64_t, double, double *, int64_t);
enum { ROW_MAJOR = 101, NO_TRANS = 111, TRANS = 112, TOP = 4 };

/* numpy's pairwise summation (add.reduce over a contiguous run), in float and in double */
static float sum_f32(const float *a, long n)
{
    if (n < 8) {
        float res = 0.0f;
        for (long i = 0; i < n; ++i) res += a[i];
        return res;
    }
    if (n <= 128) {
        float r[8], res;
        long i;
        for (int j = 0; j < 8; ++j) r[j] = a[j];
        for (i = 8; i < n - (n % 8); i += 8)
            for (int j = 0; j < 8; ++j) r[j] += a[i + j];
        res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        for (; i < n; ++i) res += a[i];
        return res;
    }
    long n2 = n / 2;
    n2 -= n2 % 8;
    return sum_f32(a, n2) + sum_f32(a + n2, n - n2);
}

static double sum_f64(const double *a, long n)
{
    if (n < 8) {
        double res = 0.0;
        for (long i = 0; i < n; ++i) res += a[i];
        return res;
    }
    if (n <= 128) {
        double r[8], res;
        long i;
        for (int j = 0; j < 8; ++j) r[j] = a[j];
        for (i = 8; i < n - (n % 8); i += 8)
            for (int j = 0; j < 8; ++j) r[j] += a[i + j];
        res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        for (; i < n; ++i) res += a[i];
        return res;
    }
    long n2 = n / 2;
    n2 -= n2 % 8;
    return sum_f64(a, n2) + sum_f64(a + n2, n - n2);
}

typedef struct {
    sgemv_fn sgemv;
    dgemv_fn dgemv;
    const float *log_tf;          /* 1 + log(count) as numpy computes it in float32, for counts < n_log_tf */
    long n_log_tf;
    const int64_t *vocab;         /* word vocabulary (sorted) */
    const float *idf;
    long n_vocab;
    const int32_t *char_columns;  /* every character bucket's column or -1 */
    const float *char_idf;
    long n_char_table;
    const float *components;      /* [V, dim] */
    long dim;
    const float *coef;            /* [V, n_heads] */
    const float *char_coef;       /* [C, n_heads], or NULL */
    const float *intercept;
    long n_heads;
    const uint8_t *platt_on;      /* NULL: no calibration */
    const double *platt_a;
    const double *platt_b;
    long n_known;
    const float *coarse;          /* [n_coarse, dim] centroids */
    long n_coarse;
    const float *fine;
    long n_fine;
    const double *coarse_tables;  /* [n_coarse, 2 n_known]: sums, counts */
    const double *fine_tables;    /* [n_fine, 4 n_known]: sums, counts, token sums, token counts */
    const double *mean;           /* per known model */
    const double *tok_prior;
    const uint8_t *has_tok;
    long n_req;
    long width;                   /* design row width */
} Plan;

/* (columns, L2-normalised sublinear TF-IDF weights) of one bag; returns how many, or -1 */
static long tfidf_words(const Plan *p, const int64_t *ids, const int64_t *counts, long n, int64_t *cols,
                        float *w)
{
    long m = 0;
    if (n == 0 || p->n_vocab == 0) return 0;
    for (long i = 0; i < n; ++i) {
        const int64_t id = ids[i];
        long lo = 0, hi = p->n_vocab;  /* searchsorted, side left */
        while (lo < hi) {
            const long mid = lo + (hi - lo) / 2;
            if (p->vocab[mid] < id) lo = mid + 1; else hi = mid;
        }
        if (lo > p->n_vocab - 1) lo = p->n_vocab - 1;
        if (p->vocab[lo] != id) continue;
        const long c = (long)counts[i];
        if (c < 0 || c >= p->n_log_tf) return -1;
        cols[m] = lo;
        w[m] = p->log_tf[c] * p->idf[lo];
        ++m;
    }
    return m;
}

static long tfidf_chars(const Plan *p, const uint32_t *ids, const uint16_t *counts, long n, int64_t *cols,
                        float *w)
{
    long m = 0;
    if (n == 0 || p->n_char_table == 0) return 0;
    if ((long)ids[n - 1] >= p->n_char_table) return -1;  /* ids are sorted */
    for (long i = 0; i < n; ++i) {
        const int32_t col = p->char_columns[ids[i]];
        if (col < 0) continue;
        if ((long)counts[i] >= p->n_log_tf) return -1;
        cols[m] = col;
        w[m] = p->log_tf[counts[i]] * p->char_idf[col];
        ++m;
    }
    return m;
}

static void normalise(float *w, float *sq, long m)
{
    for (long i = 0; i < m; ++i) sq[i] = w[i] * w[i];
    const float norm = sqrtf(sum_f32(sq, m));
    if (norm > 0)
        for (long i = 0; i < m; ++i) w[i] = w[i] / norm;
}

/* out[j] = w @ matrix[cols] for a [*, k] float32 matrix, through numpy's gemv on the gathered rows */
static int gather_product(const Plan *p, const float *matrix, long k, const int64_t *cols, const float *w,
                          long m, float *out)
{
    float *rows = malloc((size_t)(m * k) * sizeof *rows);
    if (rows == NULL) return -1;
    if (k < 16) {  /* a few heads: a call to memcpy per row costs more than the copy */
        for (long i = 0; i < m; ++i)
            for (long j = 0; j < k; ++j) rows[i * k + j] = matrix[cols[i] * k + j];
    } else {
        for (long i = 0; i < m; ++i) memcpy(rows + i * k, matrix + cols[i] * k, (size_t)k * sizeof *rows);
    }
    p->sgemv(ROW_MAJOR, TRANS, m, k, 1.0f, rows, k, w, 1, 0.0f, out, 1);
    free(rows);
    return 0;
}

/* The top centroids by similarity, most similar first (numpy's argpartition order on these
   machines, checked); -1 on a tie at the cut (numpy's pick among equals is its own) or a NaN. */
static int top_centroids(const Plan *p, const float *emb, const float *centroids, long c, float *sims,
                         int64_t *top, float *expo)
{
    p->sgemv(ROW_MAJOR, NO_TRANS, c, p->dim, 1.0f, centroids, p->dim, emb, 1, 0.0f, sims, 1);
    const long k = c < TOP ? c : TOP;
    if (c <= TOP) {
        for (long i = 0; i < c; ++i) top[i] = i;
    } else {
        long m = 0;
        for (long j = 0; j < c; ++j) {
            const float v = sims[j];
            if (v != v) return -1;
            if (m == k && !(v > sims[top[k - 1]])) continue;
            long at = m < k ? m++ : k - 1;
            while (at > 0 && v > sims[top[at - 1]]) {
                top[at] = top[at - 1];
                --at;
            }
            top[at] = j;
        }
        const float cut = sims[top[k - 1]];
        long equal = 0;
        for (long j = 0; j < c; ++j) equal += sims[j] == cut;
        for (long i = 0; i < k; ++i) equal -= sims[top[i]] == cut;
        if (equal != 0) return -1;
    }
    float s[TOP] = {0.0f, 0.0f, 0.0f, 0.0f}, mx;
    for (long i = 0; i < k; ++i) s[i] = sims[top[i]] * 12.0f;
    mx = s[0];
    for (long i = 1; i < k; ++i) mx = s[i] > mx ? s[i] : mx;
    for (long i = 0; i < TOP; ++i) expo[i] = i < k ? s[i] - mx : 0.0f;
    return 0;
}

/* The text side of one request: emb [dim], calibrated heads [n_known] (NaN past the heads), the
   top centroids and their softmax exponents (exp is left to numpy: its float32 exp is not libm's).
   request: n_req float64 values, then n_words int64 word ids and their n_words int64 counts.
   option: the multiple-choice block's share of every head, or NULL. 0, or -1: numpy. */
long scope_serving_text(const Plan *p, const char *request, long n_words, const uint32_t *char_ids,
                        const uint16_t *char_counts, long n_chars, const float *option, float *emb,
                        double *head, int64_t *top, float *expo, float *sims)
{
    const long nh = p->n_heads;
    int64_t *cols = malloc((size_t)(n_words + n_chars + 1) * sizeof *cols);
    float *w = malloc((size_t)(n_words + n_chars + 1) * sizeof *w);
    float *sq = malloc((size_t)(n_words + n_chars + p->dim + nh + 1) * sizeof *sq);
    float *acc = malloc((size_t)(nh > p->dim ? nh : p->dim) * sizeof *acc);
    long result = -1;
    if (!cols || !w || !sq || !acc) goto done;
    const int64_t *words = (const int64_t *)(request + p->n_req * sizeof(double));
    const long m = tfidf_words(p, words, words + n_words, n_words, cols, w);
    if (m < 0) goto done;
    normalise(w, sq, m);
    int64_t *ccols = cols + m;
    float *cw = w + m;
    const long mc = tfidf_chars(p, char_ids, char_counts, n_chars, ccols, cw);
    if (mc < 0) goto done;
    normalise(cw, sq, mc);

    if (m == 0) {
        for (long i = 0; i < p->dim; ++i) emb[i] = 0.0f;
    } else {
        if (gather_product(p, p->components, p->dim, cols, w, m, emb)) goto done;
        for (long i = 0; i < p->dim; ++i) sq[i] = emb[i] * emb[i];
        const float n2 = sqrtf(sum_f32(sq, p->dim));
        if (n2 > 0)
            for (long i = 0; i < p->dim; ++i) emb[i] = emb[i] / n2;
    }

    float *value = sq + p->dim;  /* [nh] */
    if (m == 0) {
        for (long j = 0; j < nh; ++j) value[j] = p->intercept[j];
    } else {
        if (gather_product(p, p->coef, nh, cols, w, m, value)) goto done;
        for (long j = 0; j < nh; ++j) value[j] = value[j] + p->intercept[j];
    }
    if (mc > 0 && p->char_coef != NULL) {
        if (gather_product(p, p->char_coef, nh, ccols, cw, mc, acc)) goto done;
        for (long j = 0; j < nh; ++j) value[j] = value[j] + acc[j];
    }
    for (long j = 0; j < nh; ++j) {
        double raw = (double)value[j];
        raw += option != NULL ? (double)option[j] : 0.0;
        if (p->platt_on != NULL && p->platt_on[j]) raw = 1.0 / (1.0 + exp(-(p->platt_a[j] * raw + p->platt_b[j])));
        head[j] = raw;
    }
    for (long j = nh; j < p->n_known; ++j) head[j] = NAN;

    if (top_centroids(p, emb, p->coarse, p->n_coarse, sims, top, expo)) goto done;
    if (top_centroids(p, emb, p->fine, p->n_fine, sims, top + TOP, expo + TOP)) goto done;
    result = 0;
done:
    free(cols);
    free(w);
    free(sq);
    free(acc);
    return result;
}

static double nan_mean(const double *v, long n, double *scratch)
{
    long m = 0;
    for (long i = 0; i < n; ++i)
        if (v[i] == v[i]) scratch[m++] = v[i];
    return m ? sum_f64(scratch, m) / (double)m : NAN;
}

static void assignment(const int64_t *top, const float *e, long c, double *weights)
{
    const long k = c < TOP ? c : TOP;
    float s[TOP];
    for (long i = 0; i < c; ++i) weights[i] = 0.0;
    for (long i = 0; i < k; ++i) s[i] = e[i];
    const float total = sum_f32(s, k);
    for (long i = 0; i < k; ++i) weights[top[i]] = (double)(s[i] / total);
}

/* The design rows [n_rows, width] of the known candidates `columns` (anchor-table columns), from
   scope_serving_text's results (expo now holding numpy's exp of the exponents). template: the
   candidates' rows with the model-side columns filled. 0, or -1 (no memory). */
long scope_serving_rows(const Plan *p, const char *request, const float *emb, const double *head,
                        const int64_t *top, const float *expo, const int64_t *columns, long n_rows,
                        const float *template, float *out)
{
    const long k = p->n_known, nc = p->n_coarse, nf = p->n_fine;
    double *wc = malloc((size_t)(nc + nf) * sizeof *wc);
    double *coarse = malloc((size_t)(2 * k) * sizeof *coarse);
    double *fine = malloc((size_t)(4 * k) * sizeof *fine);
    double *local = malloc((size_t)(4 * k) * sizeof *local);
    long result = -1;
    if (!wc || !coarse || !fine || !local) goto done;
    double *wf = wc + nc;
    assignment(top, expo, nc, wc);
    assignment(top + TOP, expo + TOP, nf, wf);
    p->dgemv(ROW_MAJOR, TRANS, nc, 2 * k, 1.0, p->coarse_tables, 2 * k, wc, 1, 0.0, coarse, 1);
    p->dgemv(ROW_MAJOR, TRANS, nf, 4 * k, 1.0, p->fine_tables, 4 * k, wf, 1, 0.0, fine, 1);
    double *local_c = local, *local_f = local + k, *local_t = local + 2 * k, *scratch = local + 3 * k;
    for (long j = 0; j < k; ++j) {
        local_c[j] = (coarse[j] + 3.0 * p->mean[j]) / (coarse[k + j] + 3.0);
        local_f[j] = (fine[j] + 3.0 * local_c[j]) / (fine[k + j] + 3.0);
        local_t[j] = p->has_tok[j] ? (fine[2 * k + j] + 3.0 * p->tok_prior[j]) / (fine[3 * k + j] + 3.0) : NAN;
    }
    const double mean_f = nan_mean(local_f, k, scratch), mean_h = nan_mean(head, k, scratch);
    const long w = p->width, n_req = p->n_req + p->dim, a0 = n_req + 4, e0 = a0 + 7;
    const double *values = (const double *)request;
    for (long r = 0; r < n_rows; ++r) {
        float *row = out + r * w;
        const long c = columns[r];
        memcpy(row, template + r * w, (size_t)w * sizeof *row);
        for (long i = 0; i < p->n_req; ++i) row[i] = (float)values[i];
        memcpy(row + p->n_req, emb, (size_t)p->dim * sizeof *row);
        row[a0 + 2] = (float)local_c[c];
        row[a0 + 3] = (float)local_f[c];
        row[a0 + 4] = (float)log1p(fine[k + c]);
        row[a0 + 6] = (float)local_t[c];
        row[e0] = (float)head[c];
        row[e0 + 1] = (float)mean_f;
        row[e0 + 2] = (float)mean_h;
        row[e0 + 3] = (float)(local_f[c] - mean_f);
        row[e0 + 4] = (float)(head[c] - mean_h);
    }
    result = 0;
done:
    free(wc);
    free(coarse);
    free(fine);
    free(local);
    return result;
}

typedef struct {
    long n_boosters;
    const uint8_t *logistic;   /* per booster */
    const int64_t *quality;    /* booster indexes of each role */
    long n_quality;
    const int64_t *prompt_mean;
    long n_prompt_mean;
    const int64_t *relative;
    long n_relative;
    long tokens;               /* booster index, or -1 */
    long latency;
    long local_n;              /* the design column of anchor_local_fine_n */
    double share;              /* the decomposed estimate's share of the quality */
} Post;

static double role_mean(const double *m, const int64_t *idx, long n, double *scratch)
{
    for (long i = 0; i < n; ++i) scratch[i] = m[idx[i]];
    return sum_f64(scratch, n) / (double)n;
}

/* predict()'s numpy post-processing of margins [n, n_boosters] (rows: the design rows): quality,
   uncertainty, output tokens and latency per row. expected_tokens: the prior's length (NaN if not
   computed); input_term: input_tokens * 0.05. -1 when a value is missing that only numpy's path fills. */
long scope_serving_post(const Post *q, double *m, long n, const float *rows, long width, const double *ttft,
                        const double *tokens_per_s, double expected_tokens, double input_term,
                        double *quality, double *uncertainty, double *tokens, double *latency)
{
    const long nb = q->n_boosters, nq = q->n_quality;
    double scratch[64], d[64];
    if (nb > 64 || nq > 64 || q->n_prompt_mean > 64 || q->n_relative > 64 || nq == 0) return -1;
    for (long r = 0; r < n; ++r) {
        double *o = m + r * nb;
        for (long j = 0; j < nb; ++j)
            if (q->logistic[j]) o[j] = 1.0 / (1.0 + exp(-o[j]));
        double qual = role_mean(o, q->quality, nq, scratch), spread = 0.0;
        if (nq > 1) {
            for (long i = 0; i < nq; ++i) {
                const double di = o[q->quality[i]] - qual;
                d[i] = di * di;
            }
            spread = sqrt(sum_f64(d, nq) / (double)nq);
        }
        if (q->n_prompt_mean && q->n_relative) {
            const double mean = role_mean(o, q->prompt_mean, q->n_prompt_mean, scratch);
            const double relative = role_mean(o, q->relative, q->n_relative, scratch);
            const double blended = (1.0 - q->share) * qual + q->share * (mean + relative);
            qual = blended < 0.0 ? 0.0 : (blended > 1.0 ? 1.0 : blended);
        }
        double local_n = expm1((double)rows[r * width + q->local_n]);
        if (local_n != local_n) local_n = 0.0;
        uncertainty[r] = sqrt(spread * spread + qual * (1.0 - qual) / (1.0 + local_n));
        quality[r] = qual < 0.0 ? 0.0 : (qual > 1.0 ? 1.0 : qual);
        double t = q->tokens >= 0 ? expm1(o[q->tokens]) : NAN;
        t = t != t ? t : (t >= 1.0 ? t : 1.0);
        if (t != t) t = expected_tokens;
        if (t != t) return -1;
        tokens[r] = t;
        double lat = q->latency >= 0 ? expm1(o[q->latency]) : NAN;
        if (lat != lat) lat = ttft[r] + input_term + t / tokens_per_s[r] * 1000.0;
        latency[r] = lat;
    }
    return 0;
}

/* ForestEvaluator.contributions: XGBoost's approximate (Saabas) contributions of one row x [nf] to
   one booster's margin, out [nf + 1] with the bias last. The booster's complete trees: features,
   thresholds, default_left [n_trees, 2^depth - 1], node means [n_trees, 2^(depth+1) - 1]. As numpy
   does it: level by level over every tree, each change of node mean added to its split's feature
   in float64. node, scratch: n_trees each. */
void scope_saabas(const float *x, long nf, const int32_t *features, const float *thr, const uint8_t *dleft,
                  const float *means, long n_trees, int depth, double base, int64_t *node, float *scratch,
                  double *out)
{
    const long n_int = (1L << depth) - 1, n_nodes = 2 * n_int + 1;
    for (long i = 0; i <= nf; ++i) out[i] = 0.0;
    for (long t = 0; t < n_trees; ++t) {
        scratch[t] = means[t * n_nodes];
        node[t] = 0;
    }
    out[nf] = base + (double)sum_f32(scratch, n_trees);
    for (int level = 0; level < depth; ++level) {
        for (long t = 0; t < n_trees; ++t) {
            const long n = node[t], at = t * n_int + n;
            const int32_t f = features[at];
            const float v = x[f];
            const long child = 2 * n + 2 - (v < thr[at] || (v != v && dleft[at]));
            out[f] += (double)(means[t * n_nodes + child] - means[t * n_nodes + n]);
            node[t] = child;
        }
    }
}

/* libm's exp, expm1 and log1p, which the kernel uses where numpy's float64 ufuncs are libm's (checked) */
void scope_serving_libm(int which, const double *x, long n, double *out)
{
    for (long i = 0; i < n; ++i) out[i] = which == 0 ? exp(x[i]) : (which == 1 ? expm1(x[i]) : log1p(x[i]));
}
"""
_P, _L, _D, _B = ctypes.c_void_p, ctypes.c_long, ctypes.c_double, ctypes.c_char_p  # bytes pass without a copy
TOP = 4
LOG_TF_SIZE = 1 << 16  # counts are uint16 (characters) or at most 2 * NGRAM_MAX_WORDS (words)


class _Plan(ctypes.Structure):
    _fields_ = [
        ("sgemv", _P),
        ("dgemv", _P),
        ("log_tf", _P),
        ("n_log_tf", _L),
        ("vocab", _P),
        ("idf", _P),
        ("n_vocab", _L),
        ("char_columns", _P),
        ("char_idf", _P),
        ("n_char_table", _L),
        ("components", _P),
        ("dim", _L),
        ("coef", _P),
        ("char_coef", _P),
        ("intercept", _P),
        ("n_heads", _L),
        ("platt_on", _P),
        ("platt_a", _P),
        ("platt_b", _P),
        ("n_known", _L),
        ("coarse", _P),
        ("n_coarse", _L),
        ("fine", _P),
        ("n_fine", _L),
        ("coarse_tables", _P),
        ("fine_tables", _P),
        ("mean", _P),
        ("tok_prior", _P),
        ("has_tok", _P),
        ("n_req", _L),
        ("width", _L),
    ]


class _Post(ctypes.Structure):
    _fields_ = [
        ("n_boosters", _L),
        ("logistic", _P),
        ("quality", _P),
        ("n_quality", _L),
        ("prompt_mean", _P),
        ("n_prompt_mean", _L),
        ("relative", _P),
        ("n_relative", _L),
        ("tokens", _L),
        ("latency", _L),
        ("local_n", _L),
        ("share", _D),
    ]


def numpy_blas() -> tuple[int, int]:
    """The addresses of cblas_sgemv and cblas_dgemv in the OpenBLAS numpy's wheel ships (scipy-openblas,
    64-bit integers); OSError without it (another numpy build: the numpy path serves)."""
    folder = Path(np.__file__).resolve().parent.parent / "numpy.libs"
    found = sorted(glob.glob(str(folder / "libscipy_openblas64_*.so")))
    if not found:
        raise OSError(f"numpy's OpenBLAS not found in {folder}")
    lib = ctypes.CDLL(found[0])
    addresses = []
    for name in ("scipy_cblas_sgemv64_", "scipy_cblas_dgemv64_"):
        fn = getattr(lib, name)  # AttributeError: not the expected build
        addresses.append(ctypes.cast(fn, ctypes.c_void_p).value or 0)
    return addresses[0], addresses[1]


class ServingKernel:
    """The library's three functions, with numpy's BLAS to call."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lib = ctypes.CDLL(str(path))  # kept: the functions must not outlive their library
        self.text = self._lib.scope_serving_text
        self.text.argtypes = (_P, _B, _L, _B, _B, _L, _P, _P, _P, _P, _P, _P)
        self.text.restype = _L
        self.rows = self._lib.scope_serving_rows
        self.rows.argtypes = (_P, _B, _P, _P, _P, _P, _P, _L, _P, _P)
        self.rows.restype = _L
        self.post = self._lib.scope_serving_post
        self.post.argtypes = (_P, _P, _L, _P, _L, _P, _P, _D, _D, _P, _P, _P, _P)
        self.post.restype = _L
        self.saabas = self._lib.scope_saabas
        self.saabas.argtypes = (_P, _L, _P, _P, _P, _P, _L, ctypes.c_int, _D, _P, _P, _P)
        self.saabas.restype = None
        self._libm = self._lib.scope_serving_libm
        self._libm.argtypes = (ctypes.c_int, _P, _L, _P)
        self._libm.restype = None
        self.blas = numpy_blas()

    def libm(self, which: int, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float64)
        out = np.empty_like(x)
        self._libm(which, x.ctypes.data, len(x), out.ctypes.data)
        return out


def _agrees(kernel: ServingKernel) -> bool:
    """libm's exp, expm1 and log1p are numpy's here (numpy's own SIMD versions serve on AVX-512 CPUs)."""
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(size=4096) * 8.0, rng.uniform(-40.0, 40.0, size=4096)])
    nonneg = np.abs(np.concatenate([x, rng.uniform(0.0, 3000.0, size=4096)]))
    return (
        np.array_equal(kernel.libm(0, x), np.exp(x))
        and np.array_equal(kernel.libm(1, x), np.expm1(x))
        and np.array_equal(kernel.libm(2, nonneg), np.log1p(nonneg))
    )


_kernel: ServingKernel | None = None


def serving_kernel() -> ServingKernel | None:
    return _kernel


def use_serving_kernel(kernel: ServingKernel | None) -> None:
    global _kernel
    _kernel = kernel


def serving_kernel_in_use() -> bool:
    return _kernel is not None


def _library(cache_dir: Path) -> Path:
    return library_path(cache_dir, "serving", SERVING_KERNEL_VERSION, SERVING_KERNEL_SOURCE)


def serving_kernel_install(cache_dir: Path, *, compile_if_missing: bool = True) -> bool:
    """Serve the one-request path's arithmetic from the compiled kernel; False when it cannot."""
    return install_kernel(
        _library(cache_dir),
        SERVING_KERNEL_SOURCE,
        load=ServingKernel,
        agrees=_agrees,
        use=use_serving_kernel,
        what="serving",
        fallback="numpy",
        compile_if_missing=compile_if_missing,
    )


def serving_kernel_ensure(cache_dir: Path) -> None:
    """At once if the library is cached, else once a background compile is done (never blocks a request)."""
    ensure_kernel(serving_kernel_install, serving_kernel_in_use, cache_dir, "scope-serving-compile")


class _Buffers:
    """One request's intermediate results and outputs for up to `rows` rows (one set per thread)."""

    def __init__(
        self, dim: int, n_known: int, n_sims: int, width: int, n_boosters: int, n_trees: int, rows: int
    ) -> None:
        self.rows = rows
        self.features: RequestFeatures | None = None  # whose text side the buffers hold, packed as `request`
        self.request = b""
        self.emb = np.empty(dim, dtype=np.float32)
        self.head = np.empty(n_known, dtype=np.float64)
        self.top = np.empty(2 * TOP, dtype=np.int64)
        self.expo = np.empty(2 * TOP, dtype=np.float32)
        self.sims = np.empty(n_sims, dtype=np.float32)
        self.x = np.empty((rows, width), dtype=np.float32)
        self.margins = np.empty((rows, n_boosters), dtype=np.float64)
        self.forest = np.empty(rows * 2 * width, dtype=np.float32)  # the forest kernel's scratch
        self.node = np.empty(rows, dtype=np.int32)
        self.out = np.empty((4, rows), dtype=np.float64)  # quality, uncertainty, tokens, latency
        self.contributions = np.empty(width + 1, dtype=np.float64)
        self.tree_node = np.empty(max(n_trees, 1), dtype=np.int64)
        self.tree_scratch = np.empty(max(n_trees, 1), dtype=np.float32)
        # raw addresses once: `array.ctypes.data` costs about 11k instructions on every access
        self.text = tuple(a.ctypes.data for a in (self.emb, self.head, self.top, self.expo, self.sims))
        self.x_at, self.margins_at = self.x.ctypes.data, self.margins.ctypes.data
        self.forest_at, self.node_at, self.out_at = (
            self.forest.ctypes.data,
            self.node.ctypes.data,
            self.out.ctypes.data,
        )
        self.saabas = tuple(a.ctypes.data for a in (self.tree_node, self.tree_scratch, self.contributions))


def _array(keep: list[np.ndarray], a: np.ndarray, dtype: type) -> int:
    """The address of `a` as a contiguous array of `dtype` (kept alive in `keep`); ValueError if it is
    not of that dtype already (the kernel would compute in another precision than numpy)."""
    if a.dtype != np.dtype(dtype):
        raise ValueError(f"{a.dtype} array where the kernel expects {np.dtype(dtype)}")
    a = np.ascontiguousarray(a)
    keep.append(a)
    return int(a.ctypes.data)


class BoundPlan:
    """A ServingPlan's predictor arrays as the kernel reads them; ValueError for a predictor whose
    shapes numpy computes another way (one head, one centroid: numpy then calls dot, not gemv)."""

    def __init__(self, kernel: ServingKernel, plan: ServingPlan) -> None:
        p = plan._p
        proj, heads, anchors = p.projection, p.heads, p.anchors
        n_heads, dim = len(heads.intercept), proj.dim
        n_coarse, n_fine = anchors.coarse.shape[0], anchors.fine.shape[0]
        if min(n_heads, dim, n_coarse, n_fine) < 2 or len(proj.vocab) == 0:
            raise ValueError("a predictor shape the kernel does not serve")
        if len(proj.char_vocab) and not len(proj._char_columns):
            raise ValueError("character vocabulary without its column table")
        self.kernel, self.plan = kernel, plan
        keep: list[np.ndarray] = []
        self._keep = keep
        with np.errstate(divide="ignore"):  # count 0 (never looked up): log(0) = -inf
            log_tf = 1.0 + np.log(np.arange(LOG_TF_SIZE, dtype=np.float32))
        char_coef = heads.char_coef if len(heads.char_coef) and len(proj.char_vocab) else None
        if heads.platt_a.size:
            on, a, b, _ = heads._platt
            platt = (
                _array(keep, on.astype(np.uint8), np.uint8),
                _array(keep, a, np.float64),
                _array(keep, b, np.float64),
            )
        else:
            platt = (0, 0, 0)
        self._options = bool(len(heads.option_vocab))
        if self._options and heads.option_coef.dtype != np.float32:
            raise ValueError("option coefficients not in float32")
        self.width = p.evaluator.n_features
        self._plan = _Plan(
            kernel.blas[0],
            kernel.blas[1],
            _array(keep, log_tf, np.float32),
            LOG_TF_SIZE,
            _array(keep, proj.vocab, np.int64),
            _array(keep, proj.idf, np.float32),
            len(proj.vocab),
            _array(keep, proj._char_columns, np.int32) if len(proj.char_vocab) else 0,
            _array(keep, proj.char_idf, np.float32) if len(proj.char_vocab) else 0,
            len(proj._char_columns) if len(proj.char_vocab) else 0,
            _array(keep, proj.components, np.float32),
            dim,
            _array(keep, heads.coef, np.float32),
            _array(keep, char_coef, np.float32) if char_coef is not None else 0,
            _array(keep, heads.intercept, np.float32),
            n_heads,
            *platt,
            plan.n_known,
            _array(keep, anchors.coarse, np.float32),
            n_coarse,
            _array(keep, anchors.fine, np.float32),
            n_fine,
            _array(keep, plan._coarse_tables, np.float64),
            _array(keep, plan._fine_tables, np.float64),
            _array(keep, np.asarray(plan.mean, dtype=np.float64), np.float64),
            _array(keep, np.asarray(plan.tok_prior, dtype=np.float64), np.float64),
            _array(keep, np.asarray(plan.has_tok, dtype=np.uint8), np.uint8),
            plan.n_req,
            self.width,
        )
        logistic = np.zeros(len(p.roles), dtype=np.uint8)
        if p.evaluator._logistic_cols is not None:
            logistic[p.evaluator._logistic_cols] = 1
        roles = [np.asarray(r, dtype=np.int64) for r in (p._quality, p._prompt_mean, p._relative)]
        if not len(roles[0]) or len(p.roles) > 64:
            raise ValueError("a predictor shape the kernel does not serve")
        self._post = _Post(
            len(p.roles),
            _array(keep, logistic, np.uint8),
            _array(keep, roles[0], np.int64),
            len(roles[0]),
            _array(keep, roles[1], np.int64),
            len(roles[1]),
            _array(keep, roles[2], np.int64),
            len(roles[2]),
            -1 if p._tokens is None else p._tokens,
            -1 if p._latency is None else p._latency,
            p._local_n,
            p.decomposed_share,
        )
        self._n_req = plan.n_req
        self._plan_at = ctypes.addressof(self._plan)
        self._post_at = ctypes.addressof(self._post)
        self._no_tokens = p._tokens is None
        self._forest: CompiledForest | None = None  # the compiled trees the predictions were checked with
        self._forest_agrees = False
        first = p.evaluator.ensembles[p._quality[0]]  # contributions() explains the first quality booster
        self._saabas = (
            _array(keep, first.features, np.int32),
            _array(keep, first.thresholds, np.float32),
            _array(keep, first.default_left.view(np.uint8), np.uint8),
            _array(keep, first.node_means, np.float32),
            first.n_trees,
            first.depth,
            float(first.base_margin),
        )
        self._sizes = (dim, plan.n_known, max(n_coarse, n_fine), self.width, len(p.roles), first.n_trees)
        self._local = threading.local()  # .buffers: a plain object, whose attributes are cheaper to read

    def _buffers(self, rows: int) -> _Buffers:
        b: _Buffers | None = getattr(self._local, "buffers", None)
        if b is None or b.rows < rows:  # a new thread, or more rows (a model twice in the list)
            b = self._local.buffers = _Buffers(*self._sizes, max(rows, self._sizes[1], 1))
        return b

    def _rows(self, features: RequestFeatures, layout: CandidateLayout, b: _Buffers) -> bool:
        """The design rows into b.x[:len(layout.columns)]; False when the kernel leaves the request to numpy.

        The text side is kept per thread for the last request (`features` are immutable): the
        contributions of the chosen model, asked right after predict(), reuse it."""
        if features is not b.features:
            b.features = None
            if not self._text(features, b):
                return False
            b.features = features
        emb, head, top, expo, _ = b.text
        columns, template, _, _ = layout.addresses
        n = len(layout.columns)
        return not self.kernel.rows(
            self._plan_at, b.request, emb, head, top, expo, columns, n, template, b.x_at
        )

    def _text(self, features: RequestFeatures, b: _Buffers) -> bool:
        ids, values = features.ngram_ids, features.values
        if len(values) != self._n_req:
            return False
        # one struct.pack: about 100 instructions per number, against 250-300 for array.array or numpy
        request = struct.pack(f"{len(values)}d{2 * len(ids)}q", *values, *ids, *features.ngram_counts)
        option = 0
        if self._options:
            share = self.plan._p.heads.option_value(features.text)
            if isinstance(share, np.ndarray):
                option_values = np.ascontiguousarray(share, dtype=np.float32)
                option = option_values.ctypes.data
        if self.kernel.text(
            self._plan_at,
            request,
            len(ids),
            features.char_ids,
            features.char_counts,
            len(features.char_ids) // 4,
            option,
            *b.text,
        ):
            return False
        np.exp(b.expo, out=b.expo)
        b.request = request
        return True

    def rows(self, features: RequestFeatures, layout: CandidateLayout) -> np.ndarray | None:
        """ServingPlan.rows' design rows, or None when the kernel leaves the request to numpy."""
        n = len(layout.columns)
        b = self._buffers(n)
        return b.x[:n].copy() if self._rows(features, layout, b) else None

    def agrees(self) -> bool:
        """The numpy path's rows and contributions on probe requests (every known model a candidate)."""
        p, layout = self.plan._p, self.plan.probe_layout()
        for features in probe_requests(p):
            rows = self.rows(features, layout)
            if rows is None:
                continue
            x = self.plan._rows_numpy(features, layout)
            got = self.contributions(features, layout)  # the same request: its text side is reused
            if (
                not np.array_equal(rows, x, equal_nan=True)
                or got is None
                or not np.array_equal(got[1], p.evaluator.contributions(x[0], p._quality[0]))
            ):
                return False
        return True

    def contributions(
        self, features: RequestFeatures, layout: CandidateLayout
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """(the first candidate's design row, ForestEvaluator.contributions of it for the first quality
        booster), or None when the kernel leaves the request to numpy."""
        b = self._buffers(len(layout.columns))
        if not len(layout.columns) or not self._rows(features, layout, b):
            return None
        self.kernel.saabas(b.x_at, self.width, *self._saabas, *b.saabas)
        return b.x[0].copy(), b.contributions.copy()

    def _predictions_agree(self, forest: CompiledForest) -> bool:
        """The numpy path's predictions (from the same compiled trees) on probe requests."""
        p, layout = self.plan._p, self.plan.probe_layout()
        for features in probe_requests(p):
            made = self._predict(features, layout, forest)
            if made is None:
                continue
            x = self.plan._rows_numpy(features, layout)
            if made != p._predictions_numpy(features, layout, x, p.evaluator.predict(x)):
                return False
        return True

    def predict(self, features: RequestFeatures, layout: CandidateLayout) -> list[Prediction] | None:
        """ScopePredictor.predict's predictions of the known candidates: rows, compiled trees and
        post-processing without a numpy array in between; None when the trees are not compiled (yet)
        or the kernel leaves the request to numpy. Checked on probe requests with each compiled forest."""
        forest = self.plan._p.evaluator.compiled
        if not isinstance(forest, CompiledForest):
            return None
        if forest is not self._forest:
            agrees = self._predictions_agree(forest)
            if not agrees:
                log.error(
                    "serving kernel's predictions disagree with numpy on %s: not used", self.plan._p.version
                )
            # the verdict before the forest it is about: another thread that reads the new verdict
            # with the old forest only falls back to numpy or checks again
            self._forest_agrees = agrees
            self._forest = forest
        return self._predict(features, layout, forest) if self._forest_agrees else None

    def _predict(
        self, features: RequestFeatures, layout: CandidateLayout, forest: CompiledForest
    ) -> list[Prediction] | None:
        n = len(layout.columns)
        b = self._buffers(n)
        if not self._rows(features, layout, b):
            return None
        forest.margins_into(b.x_at, n, self.width, b.forest_at, b.node_at, b.margins_at)
        expected = expected_output_tokens(features) if self._no_tokens else math.nan
        at = b.out_at
        _, _, ttft, tokens_per_s = layout.addresses
        if self.kernel.post(
            self._post_at,
            b.margins_at,
            n,
            b.x_at,
            self.width,
            ttft,
            tokens_per_s,
            expected,
            features.input_tokens * 0.05,
            at,
            at + 8 * b.rows,
            at + 16 * b.rows,
            at + 24 * b.rows,
        ):
            return None
        return list(map(Prediction, *b.out[:, :n].tolist()))


PROBE_TEXTS = (
    "",
    "Explain why this loop is slow: for i in range(n): total += price[i] * qty[i]. 17 * 3.25?",
    "Which of these is a prime number?\nA. 21\nB. 27\nC. 29\nD. 33\nAnswer:",
)


def probe_requests(predictor: ScopePredictor, n: int = 12, seed: int = 0) -> list[RequestFeatures]:
    """Requests that exercise the kernel on this predictor: real texts, and bags drawn from its own
    vocabularies (every word and character bucket a hit or a near miss) with random counts and values."""
    from routing.features import FEATURE_NAMES, extract_prompt_features

    rng = np.random.default_rng(seed)
    out = [extract_prompt_features(t) for t in PROBE_TEXTS]
    proj = predictor.projection
    for i in range(n):
        size = int(rng.integers(1, 1 + min(len(proj.vocab), 200)))
        ids = rng.choice(proj.vocab, size=size, replace=False) + rng.integers(0, 2, size=size)
        ids = np.unique(ids)
        chars = np.zeros(0, dtype=np.int64)
        if len(proj.char_vocab):
            csize = int(rng.integers(0 if i % 3 == 0 else 1, 1 + min(len(proj.char_vocab), 2000)))
            chars = np.unique(rng.choice(proj.char_vocab, size=csize, replace=False))
        out.append(
            RequestFeatures(
                values=tuple(rng.normal(size=len(FEATURE_NAMES)).tolist()),
                text="",
                input_tokens=int(rng.integers(1, 5000)),
                ngram_ids=tuple(ids.tolist()),
                ngram_counts=tuple(rng.integers(1, 40, size=len(ids)).tolist()),
                char_ids=chars.astype("<u4").tobytes(),
                char_counts=rng.integers(1, 300, size=len(chars)).astype("<u2").tobytes(),
            )
        )
    return out
