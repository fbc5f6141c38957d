/* A brick ADTN's whole training-mode contraction in one call each way, over its compiled plan
 * (engine/adtn_native_network.py packs the plan as a *program* of int64 numbers):
 *
 *   forward:  the first layer grown from the gates, every later layer's gate passes (each
 *             pass's input kept), the weight gathered from the output state and scaled;
 *   backward: the weight's gradient scattered into the state (with <raw weight, weight's
 *             gradient>, which the caller gives), the passes and the growth walked back:
 *             the gates' gradient.
 *
 * It strings together the kernels of adtn_native.c (built into the same library); what it
 * saves is the interpreter's and the tensor library's work between them, about 1 ms of
 * FC-2's 6-9 ms step. Both functions return 0, -1 for a program they cannot run, or
 * -2 when memory runs out.
 *
 * Program: Q, n_grow, n_layers (those after the first), n_passes, activate, normalise,
 * rows, columns (the weight's, as a matrix), then per growth step (kind, g_at, u_at), the
 * offsets of the growth's states (n_grow + 1, the first holding the number 1), the offsets
 * of the passes' states (n_passes + 1: each pass's input, then the output state), the offset
 * of the raw weight and of the copy of the gates, the passes of each layer (n_layers
 * counts), then per pass L, w, R, T, T_back, n_gates, its steps (3 numbers each) and where
 * its gates lie in the flat gate vector (n_gates numbers). Offsets count floats from the
 * start of the memory block that both calls share.
 */
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(_MSC_VER)
#define EXPORT __declspec(dllexport)
#else
#define EXPORT __attribute__((visibility("default")))
#endif

#define MAX_PROGRAM_GATES 32
#define MAX_PROGRAM_GROW 64
#define MAX_PROGRAM_PASSES 64
#define MIN_TILES_PER_THREAD 8   /* as engine/adtn_native.py */
#define ELEMENTWISE_CHUNK 65536  /* numbers per thread of a gather or scatter, at least */

/* adtn_native.c */
int adtn_pass_forward(const float *x, float *out, int64_t L, int w, int64_t R, int T,
                      const float *flat, const int *gate_at, float first_scale, const int *spec,
                      int n_gates, int activate, float slope, double *squares, int threads);
int adtn_pass_backward(const float *x, const float *grad_out, float *grad_in, int64_t L, int w,
                       int64_t R, int T, const float *flat, const int *gate_at,
                       float first_scale, const int *spec, int n_gates, float *d_flat,
                       double *dot, int activate, float slope, int threads);
double adtn_gather_grid(const float *state, const int64_t *row_at, int64_t rows,
                        const int32_t *col_at, int64_t cols, float *out, int threads);
int adtn_scatter_grid(const float *grad, const float *tensor, const int64_t *row_at,
                       int64_t rows, const int32_t *col_at, int64_t cols, int64_t size, float a,
                       float b, float *out, int threads);
int adtn_grow_gates_forward(int n, const int *kind, const int *g_at, const int *u_at,
                            const float *values, float *const *states, int activate,
                            float slope, double *squares);
int adtn_grow_gates_backward(int n, const int *kind, const int *g_at, const int *u_at,
                             const float *values, const float *const *states, float *grad,
                             float *d_values);

typedef struct {
    int64_t L, R;
    int w, T, T_back, n_gates;
    int spec[3 * MAX_PROGRAM_GATES], gate_at[MAX_PROGRAM_GATES];
} ProgramPass;

typedef struct {
    int Q, n_grow, n_layers, n_passes, activate, normalise;
    int64_t rows, cols;
    int kind[MAX_PROGRAM_GROW], g_at[MAX_PROGRAM_GROW], u_at[MAX_PROGRAM_GROW];
    int64_t grow_at[MAX_PROGRAM_GROW + 1], state_at[MAX_PROGRAM_PASSES + 1];
    int64_t raw_at, gates_at;
    int layer_passes[MAX_PROGRAM_PASSES];
    ProgramPass passes[MAX_PROGRAM_PASSES];
} Program;

static int in_range(int64_t value, int64_t lo, int64_t hi) { return value >= lo && value <= hi; }

static int region_fits(int64_t at, int64_t numel, int64_t n_memory)
{
    return at >= 0 && numel >= 0 && at <= n_memory - numel;
}

/* Reads a program for a memory block of n_memory floats and n_flat gate values; returns 1
 * for one it cannot run (short, or with an offset outside the block or the gates). */
static int read_program(const int64_t *code, int64_t length, int64_t n_memory, int64_t n_flat,
                        Program *p)
{
    int64_t at = 0;
    int short_ = 0;
#define NEXT() (at < length ? code[at++] : (short_ = 1, (int64_t)-1))
    p->Q = (int)NEXT(), p->n_grow = (int)NEXT(), p->n_layers = (int)NEXT();
    p->n_passes = (int)NEXT(), p->activate = (int)NEXT(), p->normalise = (int)NEXT();
    p->rows = NEXT(), p->cols = NEXT();
    if (!in_range(p->Q, 1, 40)) return 1;
    const int64_t size = (int64_t)1 << p->Q;
    if (!in_range(p->n_grow, 1, MAX_PROGRAM_GROW) ||
        !in_range(p->n_layers, 1, MAX_PROGRAM_PASSES) ||
        !in_range(p->n_passes, p->n_layers, MAX_PROGRAM_PASSES) || p->rows < 1 || p->cols < 1)
        return 1;
    for (int k = 0; k < p->n_grow; k++)
        p->kind[k] = (int)NEXT(), p->g_at[k] = (int)NEXT(), p->u_at[k] = (int)NEXT();
    for (int k = 0; k <= p->n_grow; k++) p->grow_at[k] = NEXT();
    for (int k = 0; k <= p->n_passes; k++) p->state_at[k] = NEXT();
    p->raw_at = NEXT(), p->gates_at = NEXT();
    int total = 0;
    for (int l = 0; l < p->n_layers; l++) {
        p->layer_passes[l] = (int)NEXT();
        if (p->layer_passes[l] < 1) return 1;
        total += p->layer_passes[l];
    }
    if (total != p->n_passes) return 1;
    for (int j = 0; j < p->n_passes; j++) {
        ProgramPass *s = &p->passes[j];
        s->L = NEXT(), s->w = (int)NEXT(), s->R = NEXT();
        s->T = (int)NEXT(), s->T_back = (int)NEXT(), s->n_gates = (int)NEXT();
        if (!in_range(s->n_gates, 1, MAX_PROGRAM_GATES) || s->T < 1 || s->T_back < 1 ||
            s->L < 1 || s->R < 1)
            return 1;
        for (int e = 0; e < 3 * s->n_gates; e++) s->spec[e] = (int)NEXT();
        for (int k = 0; k < s->n_gates; k++) {
            s->gate_at[k] = (int)NEXT();
            if (!region_fits(s->gate_at[k], 16, n_flat)) return 1;
        }
        if (!in_range(s->w, 0, 16) || s->L * ((int64_t)1 << s->w) * s->R != size) return 1;
    }
#undef NEXT
    if (short_ || at != length) return 1;
    for (int k = 0; k < p->n_grow; k++) {
        if (!region_fits(p->u_at[k], 4, n_flat)) return 1;
        if (p->kind[k] && !region_fits(p->g_at[k], 16, n_flat)) return 1;
    }
    /* (the growth's inner states are smaller than the state) */
    for (int k = 0; k <= p->n_grow; k++)
        if (!region_fits(p->grow_at[k], k ? size : 1, n_memory)) return 1;
    for (int k = 0; k <= p->n_passes; k++)
        if (!region_fits(p->state_at[k], size, n_memory)) return 1;
    if (!region_fits(p->raw_at, p->rows * p->cols, n_memory) ||
        !region_fits(p->gates_at, n_flat, n_memory) || p->rows * p->cols > size)
        return 1;
    return 0;
}

static int pass_threads(const ProgramPass *s, int columns, int threads)
{
    const int64_t tiles = s->L * (s->R / columns) / MIN_TILES_PER_THREAD;
    return (int)(tiles < 1 ? 1 : (tiles < threads ? tiles : threads));
}

static int elementwise_threads(int64_t numel, int threads)
{
    const int64_t most = numel / ELEMENTWISE_CHUNK;
    return (int)(most < 1 ? 1 : (most < threads ? most : threads));
}

/* 1 / rms of n numbers whose squares sum to squares, as engine/adtn_kernel.py's
 * _inverse_rms_of (a zero state keeps a finite factor) */
static float inverse_rms(double squares, int64_t n)
{
    const double root = sqrt((double)n);
    const double norm = fmax(sqrt(squares), (double)FLT_MIN * root);
    return (float)(root / norm);
}

/* Forward. memory: the block of n_memory floats that the program's offsets point into;
 * gates: the flat gate vector (n_flat numbers, copied into the block: the backward pass
 * reads that copy); row_at, col_at: the weight's gather tables; scale: the weight's scale.
 * Writes weight (rows x cols) = scale * raw / rms(raw), each later layer's normalisation
 * factor into factors (1 where it does not normalise) and 1 / rms(raw) into final. */
EXPORT int adtn_network_forward(const int64_t *code, int64_t length, float *memory,
                                int64_t n_memory, const float *gates, int64_t n_flat,
                                const int64_t *row_at, const int32_t *col_at, float scale,
                                float slope, float *weight, float *factors, float *final,
                                int threads)
{
    Program *p = malloc(sizeof(Program));
    if (p == NULL) return -2;
    if (read_program(code, length, n_memory, n_flat, p)) {
        free(p);
        return -1;
    }
    const int64_t size = (int64_t)1 << p->Q;
    float *flat = memory + p->gates_at;
    memcpy(flat, gates, sizeof(float) * (size_t)n_flat);
    float *grow_states[MAX_PROGRAM_GROW + 1];
    for (int k = 0; k <= p->n_grow; k++) grow_states[k] = memory + p->grow_at[k];
    grow_states[0][0] = 1.0f; /* (the growth starts from the number 1) */
    double squares = 0.0;
    int code_ = adtn_grow_gates_forward(p->n_grow, p->kind, p->g_at, p->u_at, flat, grow_states,
                                        p->activate, slope, p->normalise ? &squares : NULL);
    int j = 0;
    for (int l = 0; l < p->n_layers && !code_; l++) {
        const int last_layer = l == p->n_layers - 1;
        factors[l] = p->normalise ? inverse_rms(squares, size) : 1.0f;
        for (int k = 0; k < p->layer_passes[l] && !code_; k++, j++) {
            const ProgramPass *s = &p->passes[j];
            /* a layer's last pass activates and sums the squares for the next layer */
            const int ends = k == p->layer_passes[l] - 1 && !last_layer;
            code_ = adtn_pass_forward(memory + p->state_at[j], memory + p->state_at[j + 1], s->L,
                                      s->w, s->R, s->T, flat, s->gate_at, k ? 1.0f : factors[l],
                                      s->spec, s->n_gates, ends && p->activate, slope,
                                      ends && p->normalise ? &squares : NULL,
                                      pass_threads(s, s->T, threads));
        }
    }
    if (!code_) {
        const int64_t n = p->rows * p->cols;
        float *raw = memory + p->raw_at;
        const double raw_squares =
            adtn_gather_grid(memory + p->state_at[p->n_passes], row_at, p->rows, col_at, p->cols,
                             raw, elementwise_threads(n, threads));
        if (raw_squares < 0.0) code_ = -2; /* (out of memory) */
        *final = inverse_rms(raw_squares, n);
        const float factor = scale * *final;
        for (int64_t e = 0; e < n; e++) weight[e] = raw[e] * factor;
    }
    free(p);
    return code_;
}

/* Backward, after adtn_network_forward on the same memory (read only, but for the output
 * state's slot, which becomes the gradient's work space): from the weight's gradient
 * grad_weight and dot = <raw, grad_weight> (the caller's, so that it is rounded as the
 * step-by-step kernel's is), the gradient of the flat gates into d_flat (n_flat numbers). */
EXPORT int adtn_network_backward(const int64_t *code, int64_t length, float *memory,
                                 int64_t n_memory, int64_t n_flat, const int64_t *row_at,
                                 const int32_t *col_at, float scale, float slope,
                                 const float *factors, float final, const float *grad_weight,
                                 double dot, float *d_flat, int threads)
{
    Program *p = malloc(sizeof(Program));
    if (p == NULL) return -2;
    if (read_program(code, length, n_memory, n_flat, p)) {
        free(p);
        return -1;
    }
    const int64_t size = (int64_t)1 << p->Q, n = p->rows * p->cols;
    const float *flat = memory + p->gates_at, *raw = memory + p->raw_at;
    float *grad = memory + p->state_at[p->n_passes];
    /* d/d raw of scale * raw / rms(raw): scale/rms * (g - raw <raw, g> / (n rms^2)), in
     * engine/adtn_kernel.py's order of operations */
    const double a = (double)scale * (double)final;
    const double b = a * ((double)final * (double)final) * dot / (double)n;
    int code_ = adtn_scatter_grid(grad_weight, raw, row_at, p->rows, col_at, p->cols, size,
                                  (float)a, (float)b, grad, elementwise_threads(size, threads));
    memset(d_flat, 0, sizeof(float) * (size_t)n_flat);
    int j = p->n_passes - 1;
    for (int l = p->n_layers - 1; l >= 0 && !code_; l--) {
        for (int k = p->layer_passes[l] - 1; k >= 0 && !code_; k--, j--) {
            const ProgramPass *s = &p->passes[j];
            /* a layer's first pass also goes back through the activation before it; the
             * normalisation there is left out of the gradient (engine/adtn_kernel.py says
             * why that is exact) */
            code_ = adtn_pass_backward(memory + p->state_at[j], grad, grad, s->L, s->w, s->R,
                                       s->T_back, flat, s->gate_at, k ? 1.0f : factors[l],
                                       s->spec, s->n_gates, d_flat, NULL, !k && p->activate,
                                       slope, pass_threads(s, s->T_back, threads));
        }
    }
    if (!code_) {
        const float *grow_states[MAX_PROGRAM_GROW + 1];
        for (int k = 0; k <= p->n_grow; k++) grow_states[k] = memory + p->grow_at[k];
        code_ = adtn_grow_gates_backward(p->n_grow, p->kind, p->g_at, p->u_at, flat,
                                         grow_states, grad, d_flat);
    }
    free(p);
    return code_;
}
