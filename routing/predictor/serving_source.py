"""The C source of the serving kernel (routing/predictor/serving_kernel.py) and the ctypes mirrors of its
two structs, kept apart from the loader.

Its functions repeat numpy's operations step for step (see serving_kernel.py's docstring for how
each stays bit-identical); the library's name is a hash of this text, so any edit builds a new one.
"""

from __future__ import annotations

import ctypes

import numpy as np

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
#define PAIRWISE_SUM(NAME, T)                                                  \
    static T NAME(const T *a, long n)                                          \
    {                                                                          \
        if (n < 8) {                                                           \
            T res = 0;                                                         \
            for (long i = 0; i < n; ++i) res += a[i];                          \
            return res;                                                        \
        }                                                                      \
        if (n <= 128) {                                                        \
            T r[8], res;                                                       \
            long i;                                                            \
            for (int j = 0; j < 8; ++j) r[j] = a[j];                           \
            for (i = 8; i < n - (n % 8); i += 8)                               \
                for (int j = 0; j < 8; ++j) r[j] += a[i + j];                  \
            res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7])); \
            for (; i < n; ++i) res += a[i];                                    \
            return res;                                                        \
        }                                                                      \
        long n2 = n / 2;                                                       \
        n2 -= n2 % 8;                                                          \
        return NAME(a, n2) + NAME(a + n2, n - n2);                             \
    }
PAIRWISE_SUM(sum_f32, float)
PAIRWISE_SUM(sum_f64, double)

/* numpy's own inner loops of its float64 exp, expm1 and log1p and its float32 exp, as its ufuncs
   hold them (serving_kernel.numpy_loops): on CPUs with AVX-512 numpy computes these with SIMD code
   of its own, whose last bit can differ from libm's, so the kernel calls numpy's code, never libm's. */
typedef void (*ufunc_loop)(char **args, const long *n, const long *steps, void *data);
enum { NP_EXP, NP_EXPM1, NP_LOG1P, NP_EXP_F32, NP_LOOPS };
static ufunc_loop np_loop[NP_LOOPS];
static void *np_data[NP_LOOPS];

void scope_serving_use_numpy(void *const *loops, void *const *data)
{
    for (int i = 0; i < NP_LOOPS; ++i) {
        np_loop[i] = (ufunc_loop)loops[i];
        np_data[i] = data[i];
    }
}

static double np_f64(int which, double x)
{
    double out;
    char *args[2] = {(char *)&x, (char *)&out};
    const long n = 1, steps[2] = {sizeof x, sizeof out};
    np_loop[which](args, &n, steps, np_data[which]);
    return out;
}

/* np.exp(a, out=a) of n contiguous floats */
static void np_exp_f32_inplace(float *a, long n)
{
    char *args[2] = {(char *)a, (char *)a};
    const long steps[2] = {sizeof *a, sizeof *a};
    np_loop[NP_EXP_F32](args, &n, steps, np_data[NP_EXP_F32]);
}

/* A word of the vocabulary in its open-addressing table (col -1: an empty slot), and a character
   bucket (col -1: not in the vocabulary): each look-up reads one slot, column and idf together */
typedef struct { int64_t id; int32_t col; float idf; } VocabSlot;
typedef struct { int32_t col; float idf; } CharSlot;

typedef struct {
    sgemv_fn sgemv;
    dgemv_fn dgemv;
    const float *log_tf;          /* 1 + log(count) as numpy computes it in float32, for counts < n_log_tf */
    long n_log_tf;
    const VocabSlot *vocab;       /* 2^vocab_bits slots, at most half of them used */
    long vocab_bits;
    long n_vocab;
    const CharSlot *chars;        /* every character bucket */
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

#define VOCAB_MIX 0x9E3779B97F4A7C15ull

/* (columns, L2-normalised sublinear TF-IDF weights) of one bag; returns how many, or -1 */
static long tfidf_words(const Plan *p, const int64_t *ids, const int64_t *counts, long n, int64_t *cols,
                        float *w)
{
    long m = 0;
    if (n == 0 || p->n_vocab == 0) return 0;
    const uint64_t mask = ((uint64_t)1 << p->vocab_bits) - 1;
    for (long i = 0; i < n; ++i) {
        const int64_t id = ids[i];
        uint64_t at = ((uint64_t)id * VOCAB_MIX) >> (64 - p->vocab_bits);  /* as vocab_table() */
        const VocabSlot *slot = p->vocab + at;
        while (slot->col >= 0 && slot->id != id) {
            at = (at + 1) & mask;
            slot = p->vocab + at;
        }
        if (slot->col < 0) continue;  /* not in the vocabulary */
        const long c = (long)counts[i];
        if (c < 0 || c >= p->n_log_tf) return -1;
        cols[m] = slot->col;
        w[m] = p->log_tf[c] * slot->idf;
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
        const CharSlot slot = p->chars[ids[i]];
        if (slot.col < 0) continue;
        if ((long)counts[i] >= p->n_log_tf) return -1;
        cols[m] = slot.col;
        w[m] = p->log_tf[counts[i]] * slot.idf;
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
   top centroids and the exps of their softmax exponents.
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
        if (p->platt_on != NULL && p->platt_on[j]) raw = 1.0 / (1.0 + np_f64(NP_EXP, -(p->platt_a[j] * raw + p->platt_b[j])));
        head[j] = raw;
    }
    for (long j = nh; j < p->n_known; ++j) head[j] = NAN;

    if (top_centroids(p, emb, p->coarse, p->n_coarse, sims, top, expo)) goto done;
    if (top_centroids(p, emb, p->fine, p->n_fine, sims, top + TOP, expo + TOP)) goto done;
    np_exp_f32_inplace(expo, 2 * TOP);  /* the softmax numerators, as np.exp(expo, out=expo) */
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
   scope_serving_text's results. template: the
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
        row[a0 + 4] = (float)np_f64(NP_LOG1P, fine[k + c]);
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
            if (q->logistic[j]) o[j] = 1.0 / (1.0 + np_f64(NP_EXP, -o[j]));
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
        double local_n = np_f64(NP_EXPM1, (double)rows[r * width + q->local_n]);
        if (local_n != local_n) local_n = 0.0;
        uncertainty[r] = sqrt(spread * spread + qual * (1.0 - qual) / (1.0 + local_n));
        quality[r] = qual < 0.0 ? 0.0 : (qual > 1.0 ? 1.0 : qual);
        double t = q->tokens >= 0 ? np_f64(NP_EXPM1, o[q->tokens]) : NAN;
        t = t != t ? t : (t >= 1.0 ? t : 1.0);
        if (t != t) t = expected_tokens;
        if (t != t) return -1;
        tokens[r] = t;
        double lat = q->latency >= 0 ? np_f64(NP_EXPM1, o[q->latency]) : NAN;
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

/* numpy's loop `which` as the kernel calls it, one element at a time (float for NP_EXP_F32, else
   double): installed only after it gave numpy's own results on whole arrays */
void scope_serving_numpy_each(int which, const void *x, long n, void *out)
{
    for (long i = 0; i < n; ++i) {
        if (which == NP_EXP_F32) {
            float v = ((const float *)x)[i];
            np_exp_f32_inplace(&v, 1);
            ((float *)out)[i] = v;
        } else {
            ((double *)out)[i] = np_f64(which, ((const double *)x)[i]);
        }
    }
}
"""
_P, _L, _D = ctypes.c_void_p, ctypes.c_long, ctypes.c_double
VOCAB_MIX = 0x9E3779B97F4A7C15  # the C VOCAB_MIX: a word id's slot is the top bits of id * VOCAB_MIX
VOCAB_SLOT = np.dtype([("id", "<i8"), ("col", "<i4"), ("idf", "<f4")])  # the C VocabSlot
CHAR_SLOT = np.dtype([("col", "<i4"), ("idf", "<f4")])  # the C CharSlot


def vocab_table(vocab: np.ndarray, idf: np.ndarray) -> tuple[np.ndarray, int]:
    """The kernel's open-addressing table of the word vocabulary and its bits (2^bits slots, at least
    twice as many as words): a word's slot is the top bits of id * VOCAB_MIX (mod 2^64), the next
    free one on a collision. A look-up reads about one slot where the binary search over the sorted
    ids read a dozen, most of them cache lines no other look-up of the request had brought in. A
    repeated id keeps its first column, as numpy's searchsorted finds."""
    bits = max(1, int(2 * len(vocab) - 1).bit_length())
    mask = (1 << bits) - 1
    home = (vocab.astype(np.int64).view(np.uint64) * np.uint64(VOCAB_MIX)) >> np.uint64(64 - bits)
    placed: set[int] = set()
    taken = bytearray(1 << bits)
    slots, columns = [], []
    for col, (word, at) in enumerate(zip(vocab.tolist(), home.tolist(), strict=True)):
        if word in placed:
            continue  # a repeated id keeps its first column
        while taken[at]:
            at = (at + 1) & mask
        taken[at] = 1
        placed.add(word)
        slots.append(at)
        columns.append(col)
    table = np.zeros(1 << bits, dtype=VOCAB_SLOT)
    table["col"] = -1
    at_, col_ = np.array(slots, dtype=np.int64), np.array(columns, dtype=np.int64)
    table["id"][at_] = vocab[col_]
    table["col"][at_] = col_
    table["idf"][at_] = idf[col_]
    return table, bits


def char_table(columns: np.ndarray, idf: np.ndarray) -> np.ndarray:
    """Every character bucket's column (-1: not in the vocabulary) beside its idf, for the kernel."""
    table = np.zeros(len(columns), dtype=CHAR_SLOT)
    table["col"] = columns
    table["idf"] = np.where(columns >= 0, idf[np.maximum(columns, 0)], 0.0)
    return table


class Plan(ctypes.Structure):
    """The C `Plan`: one predictor's arrays and sizes, as the kernel reads them (field for field)."""

    _fields_ = [
        ("sgemv", _P),
        ("dgemv", _P),
        ("log_tf", _P),
        ("n_log_tf", _L),
        ("vocab", _P),
        ("vocab_bits", _L),
        ("n_vocab", _L),
        ("chars", _P),
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


class Post(ctypes.Structure):
    """The C `Post`: what predict()'s post-processing needs to know of the boosters (field for field)."""

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
