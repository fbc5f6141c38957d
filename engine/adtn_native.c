/* Passes of 4x4 gates over an ADTN state, forward and backward, in float32.
 *
 * Built on first use by engine/adtn_native.py with the system's C compiler and loaded with
 * ctypes; without a compiler the engine keeps its matrix-product kernel (engine/adtn_kernel.py).
 *
 * A *pass* views the state as (L, 2^w, R) and runs a list of steps on it, one per gate: a gate
 * on a bit pair of the tile viewed as rows of some width (bit 0 the most significant; on rows
 * of 16, one vector each, the pair may reach into the row's own bits: lane permutations), or,
 * when R == T (the tile's columns are the state's last bits), a Kronecker block of gates on
 * the last b bits, applied to each row of 2^b numbers. The state is processed in tiles of 2^w
 * rows by T columns: a tile is copied into a small contiguous buffer, every step of the pass
 * is applied to it while it sits in the L1/L2 cache, and it is copied out, so a pass costs
 * one trip through memory whatever its number of gates (a matrix product per block of gates
 * costs one trip per block, and a 16x16 block four times a gate's arithmetic). Loops run
 * over the columns so that the compiler vectorises them. A whole brick layer fits two
 * passes, three above Q = 20 (engine/adtn_native.py, plan_brick_layer).
 *
 * The backward pass gets the pass's input and the gradient of its output; per tile it
 * recomputes the inputs of the pass's gates, then walks back through them, accumulating each
 * gate's gradient (per tile in float32, across tiles in double) and turning the output's
 * gradient into the input's.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#else
static int omp_get_thread_num(void) { return 0; }
#endif

#if defined(_MSC_VER)
#define RESTRICT __restrict
#define EXPORT __declspec(dllexport)
#else
#define RESTRICT __restrict__
#define EXPORT __attribute__((visibility("default")))
#endif

#if defined(__GNUC__)
#define INLINE static inline __attribute__((always_inline))
#else
#define INLINE static __forceinline
#endif

#define MAX_T 128 /* columns of a tile */
#define MAX_BLOCK 32 /* columns of a low block */
#define MAX_GATES 32

/* The 2^b x 2^b Kronecker block of the low gates (gate k on bits low_pos[k], low_pos[k]+1 of
 * the b bits; identity on bits no gate covers), row-major, and transposed. */
static void low_block(const float *gates, const int *low_pos, int n_low, int b, float *block,
                      float *block_t)
{
    const int size = 1 << b;
    for (int r = 0; r < size; r++) {
        for (int c = 0; c < size; c++) {
            float value = 1.0f;
            int covered = 0;
            for (int k = 0; k < n_low; k++) {
                const int shift = b - low_pos[k] - 2;
                const int i = (r >> shift) & 3, j = (c >> shift) & 3;
                value *= gates[16 * k + 4 * i + j];
                covered |= 3 << shift;
            }
            if ((r & ~covered) != (c & ~covered)) value = 0.0f;
            block[r * size + c] = value;
            block_t[c * size + r] = value;
        }
    }
}

/* Gradient of each low gate from that of the block (the block's other factors held fixed). */
static void low_block_backward(const float *gates, const int *low_pos, int n_low, int b,
                               const double *d_block, float *d_gates)
{
    const int size = 1 << b;
    for (int k = 0; k < n_low; k++) {
        double acc[16] = {0};
        for (int r = 0; r < size; r++) {
            for (int c = 0; c < size; c++) {
                double partner = d_block[r * size + c];
                int covered = 0, own = 0;
                for (int m = 0; m < n_low; m++) {
                    const int shift = b - low_pos[m] - 2;
                    const int i = (r >> shift) & 3, j = (c >> shift) & 3;
                    covered |= 3 << shift;
                    if (m == k)
                        own = 4 * i + j;
                    else
                        partner *= gates[16 * m + 4 * i + j];
                }
                if ((r & ~covered) != (c & ~covered)) continue;
                acc[own] += partner;
            }
        }
        for (int e = 0; e < 16; e++) d_gates[16 * k + e] = (float)acc[e];
    }
}

/* Gate kernels on a tile of 2^w rows by T columns, V columns (one vector) at a time; written
 * with GCC/Clang vector types, so that the sixteen gradient sums of a gate stay in registers
 * across the tile instead of going through memory at every step. */
#define GATE_KERNELS(V)                                                                       \
    typedef float vec##V __attribute__((vector_size(4 * V)));                                 \
    /* dst <- gate g on bits (p, p+1) of src (dst may be src) */                              \
    static void gate_apply_##V(float *dst, const float *src, const float *g, int w, int p,    \
                               int T)                                                         \
    {                                                                                         \
        const size_t s = (size_t)1 << (w - p - 2), outer = (size_t)1 << p, step = s * T;      \
        /* the gate's entries broadcast once, held in registers (stores to dst could alias \
         * g as far as the compiler knows, which made it reload them at every step) */        \
        vec##V G[16];                                                                         \
        for (int e = 0; e < 16; e++) G[e] = (vec##V){0} + g[e];                               \
        for (size_t o = 0; o < outer; o++)                                                    \
            for (size_t i = 0; i < s; i++)                                                    \
                for (int c = 0; c < T; c += V) {                                              \
                    const size_t at = (4 * o * s + i) * T + c;                                \
                    vec##V a0, a1, a2, a3;                                                    \
                    memcpy(&a0, src + at, sizeof a0);                                         \
                    memcpy(&a1, src + at + step, sizeof a1);                                  \
                    memcpy(&a2, src + at + 2 * step, sizeof a2);                              \
                    memcpy(&a3, src + at + 3 * step, sizeof a3);                              \
                    const vec##V r0 = G[0] * a0 + G[1] * a1 + G[2] * a2 + G[3] * a3;          \
                    const vec##V r1 = G[4] * a0 + G[5] * a1 + G[6] * a2 + G[7] * a3;          \
                    const vec##V r2 = G[8] * a0 + G[9] * a1 + G[10] * a2 + G[11] * a3;        \
                    const vec##V r3 = G[12] * a0 + G[13] * a1 + G[14] * a2 + G[15] * a3;      \
                    memcpy(dst + at, &r0, sizeof r0);                                         \
                    memcpy(dst + at + step, &r1, sizeof r1);                                  \
                    memcpy(dst + at + 2 * step, &r2, sizeof r2);                              \
                    memcpy(dst + at + 3 * step, &r3, sizeof r3);                              \
                }                                                                             \
    }                                                                                         \
    /* total[4a+b] += sum of grad_a * input_b over the tile; grad <- g^T grad */              \
    static void gate_backward_##V(float *grad, const float *input, const float *g,            \
                                  double *total, int w, int p, int T)                         \
    {                                                                                         \
        const size_t s = (size_t)1 << (w - p - 2), outer = (size_t)1 << p, step = s * T;      \
        for (int c = 0; c < T; c += V) {                                                      \
            vec##V acc[16];                                                                   \
            memset(acc, 0, sizeof acc);                                                       \
            for (size_t o = 0; o < outer; o++)                                                \
                for (size_t i = 0; i < s; i++) {                                              \
                    const size_t at = (4 * o * s + i) * T + c;                                \
                    vec##V y[4], x[4];                                                        \
                    for (int k = 0; k < 4; k++) {                                             \
                        memcpy(&y[k], grad + at + k * step, sizeof y[k]);                     \
                        memcpy(&x[k], input + at + k * step, sizeof x[k]);                    \
                    }                                                                         \
                    for (int a = 0; a < 4; a++)                                               \
                        for (int b = 0; b < 4; b++) acc[4 * a + b] += y[a] * x[b];            \
                    for (int k = 0; k < 4; k++) {                                             \
                        const vec##V r = g[k] * y[0] + g[4 + k] * y[1] + g[8 + k] * y[2] +    \
                                         g[12 + k] * y[3];                                    \
                        memcpy(grad + at + k * step, &r, sizeof r);                           \
                    }                                                                         \
                }                                                                             \
            for (int e = 0; e < 16; e++) {                                                    \
                float sum = 0.0f;                                                             \
                for (int k = 0; k < V; k++) sum += acc[e][k];                                 \
                total[e] += sum;                                                              \
            }                                                                                 \
        }                                                                                     \
    }

GATE_KERNELS(8)
GATE_KERNELS(16)

INLINE void gate_apply(float *dst, const float *src, const float *g, int w, int p, int T)
{
    if (T % 16 == 0) gate_apply_16(dst, src, g, w, p, T);
    else gate_apply_8(dst, src, g, w, p, T);
}

INLINE void gate_backward(float *grad, const float *input, const float *g, double *total, int w,
                          int p, int T)
{
    if (T % 16 == 0) gate_backward_16(grad, input, g, total, w, p, T);
    else gate_backward_8(grad, input, g, total, w, p, T);
}

/* Rows of T numbers as one vector (GCC/Clang vector extensions; the compiler splits wider
 * vectors into its registers). Written out by hand: with plain loops the compiler vectorised
 * across rows and spent its time shuffling. */
#define ROW_KERNELS(N)                                                                        \
    typedef float row##N __attribute__((vector_size(4 * N)));                                 \
    /* each row <- matrix times the row, with matrix_t the transposed N x N matrix; four   \
     * rows at a time, so that four chains of multiply-adds overlap */                        \
    static void rows_apply_##N(float *rows, int count, const float *matrix_t)                 \
    {                                                                                         \
        row##N columns[N];                                                                    \
        memcpy(columns, matrix_t, sizeof columns);                                            \
        int r = 0;                                                                            \
        for (; r + 4 <= count; r += 4) {                                                      \
            float *row = rows + (size_t)r * N;                                                \
            row##N a0 = columns[0] * row[0], a1 = columns[0] * row[N];                        \
            row##N a2 = columns[0] * row[2 * N], a3 = columns[0] * row[3 * N];                \
            for (int j = 1; j < N; j++) {                                                     \
                a0 += columns[j] * row[j];                                                    \
                a1 += columns[j] * row[N + j];                                                \
                a2 += columns[j] * row[2 * N + j];                                            \
                a3 += columns[j] * row[3 * N + j];                                            \
            }                                                                                 \
            memcpy(row, &a0, sizeof a0);                                                      \
            memcpy(row + N, &a1, sizeof a1);                                                  \
            memcpy(row + 2 * N, &a2, sizeof a2);                                              \
            memcpy(row + 3 * N, &a3, sizeof a3);                                              \
        }                                                                                     \
        for (; r < count; r++) {                                                              \
            float *row = rows + (size_t)r * N;                                                \
            row##N acc = columns[0] * row[0];                                                 \
            for (int j = 1; j < N; j++) acc += columns[j] * row[j];                           \
            memcpy(row, &acc, sizeof acc);                                                    \
        }                                                                                     \
    }                                                                                         \
    /* d_block[i][j] += sum over rows of grad[i] * input[j] */                                \
    static void rows_outer_##N(float *d_block, const float *grad, const float *input,        \
                               int count)                                                     \
    {                                                                                         \
        row##N acc[N];                                                                        \
        memcpy(acc, d_block, sizeof acc);                                                     \
        for (int r = 0; r < count; r++) {                                                     \
            row##N x;                                                                         \
            memcpy(&x, input + (size_t)r * N, sizeof x);                                      \
            const float *g = grad + (size_t)r * N;                                            \
            for (int i = 0; i < N; i++) acc[i] += x * g[i];                                   \
        }                                                                                     \
        memcpy(d_block, acc, sizeof acc);                                                     \
    }

ROW_KERNELS(8)
ROW_KERNELS(16)
ROW_KERNELS(32)

INLINE void rows_apply(float *rows, int count, const float *matrix_t, int T)
{
    if (T == 8) rows_apply_8(rows, count, matrix_t);
    else if (T == 16) rows_apply_16(rows, count, matrix_t);
    else if (T == 32) rows_apply_32(rows, count, matrix_t);
}

INLINE void rows_outer(float *d_block, const float *grad, const float *input, int count, int T)
{
    if (T == 8) rows_outer_8(d_block, grad, input, count);
    else if (T == 16) rows_outer_16(d_block, grad, input, count);
    else if (T == 32) rows_outer_32(d_block, grad, input, count);
}

/* Gates on the last bits of the tile's flat index, inside its 16-number vectors, with lane
 * permutations (one instruction each) instead of a Kronecker block per row, whose 8x8 or
 * 16x16 products cost two to four times a gate's arithmetic at half the vector width. A gate
 * on bits of lane weights h > l (h = 2l) reads, for lane e, the lanes e ^ f for the four flips
 * f of those two bits: out = sum over f of C_f * x[e ^ f], C_f[e] = g[r][r ^ f'] with r the
 * lane's own pair value and f' the flip as a pair value. */
typedef float lane16 __attribute__((vector_size(64)));

/* x with lane e taking lane e ^ f (f a constant): one permutation instruction */
#if defined(__clang__) || (defined(__GNUC__) && __GNUC__ >= 12)
#define SHUFFLE16(x, ...) __builtin_shufflevector(x, x, __VA_ARGS__)
#else
typedef int32_t index16 __attribute__((vector_size(64)));
#define SHUFFLE16(x, ...) __builtin_shuffle(x, (index16){__VA_ARGS__})
#endif
#if defined(__clang__) || (defined(__GNUC__) && __GNUC__ >= 12)
#define SHUFFLE2_16(a, b, ...) __builtin_shufflevector(a, b, __VA_ARGS__)
#else
#define SHUFFLE2_16(a, b, ...) __builtin_shuffle(a, b, (index16){__VA_ARGS__})
#endif
#define XOR16(x, f)                                                                           \
    SHUFFLE16(x, 0 ^ (f), 1 ^ (f), 2 ^ (f), 3 ^ (f), 4 ^ (f), 5 ^ (f), 6 ^ (f), 7 ^ (f),       \
              8 ^ (f), 9 ^ (f), 10 ^ (f), 11 ^ (f), 12 ^ (f), 13 ^ (f), 14 ^ (f), 15 ^ (f))

/* lane e's value of the gate's bit pair (high bit of lane weight h, low bit h / 2) */
static int pair_value(int e, int h) { return 2 * ((e & h) != 0) + ((e & (h >> 1)) != 0); }

/* A gate on the lane bits of weights H, H / 2 of each vector (the flips of pair values 1, 2
 * and 3 are lane masks H / 2, H and both). */
#define LANE_KERNELS(H)                                                                       \
    /* dst <- the gate applied to src (n numbers) */                                          \
    static void lane_gate_apply_##H(float *dst, const float *src, const float *g, size_t n)  \
    {                                                                                         \
        lane16 C[4];                                                                          \
        for (int f = 0; f < 4; f++)                                                           \
            for (int e = 0; e < 16; e++) {                                                    \
                const int r = pair_value(e, H);                                               \
                C[f][e] = g[4 * r + (r ^ f)];                                                 \
            }                                                                                 \
        for (size_t at = 0; at < n; at += 16) {                                               \
            lane16 x;                                                                         \
            memcpy(&x, src + at, sizeof x);                                                   \
            const lane16 y = C[0] * x + C[1] * XOR16(x, H / 2) + C[2] * XOR16(x, H) +         \
                             C[3] * XOR16(x, H + H / 2);                                      \
            memcpy(dst + at, &y, sizeof y);                                                   \
        }                                                                                     \
    }                                                                                         \
    /* total[4r + c] += the gate's gradient over the tile; grad <- g^T grad */                \
    static void lane_gate_backward_##H(float *grad, const float *input, const float *g,      \
                                       double *total, size_t n)                               \
    {                                                                                         \
        lane16 D[4], acc[4];                                                                  \
        for (int f = 0; f < 4; f++) {                                                         \
            acc[f] = (lane16){0};                                                             \
            for (int e = 0; e < 16; e++) {                                                    \
                const int r = pair_value(e, H);                                               \
                D[f][e] = g[4 * (r ^ f) + r];                                                 \
            }                                                                                 \
        }                                                                                     \
        for (size_t at = 0; at < n; at += 16) {                                               \
            lane16 x, y;                                                                      \
            memcpy(&x, input + at, sizeof x);                                                 \
            memcpy(&y, grad + at, sizeof y);                                                  \
            acc[0] += y * x;                                                                  \
            acc[1] += y * XOR16(x, H / 2);                                                    \
            acc[2] += y * XOR16(x, H);                                                        \
            acc[3] += y * XOR16(x, H + H / 2);                                                \
            const lane16 r = D[0] * y + D[1] * XOR16(y, H / 2) + D[2] * XOR16(y, H) +         \
                             D[3] * XOR16(y, H + H / 2);                                      \
            memcpy(grad + at, &r, sizeof r);                                                  \
        }                                                                                     \
        for (int f = 0; f < 4; f++)                                                           \
            for (int e = 0; e < 16; e++) {                                                    \
                const int r = pair_value(e, H);                                               \
                total[4 * r + (r ^ f)] += acc[f][e];                                          \
            }                                                                                 \
    }

LANE_KERNELS(8)
LANE_KERNELS(4)
LANE_KERNELS(2)

static void lane_gate_apply(float *dst, const float *src, const float *g, int h, size_t n)
{
    if (h == 8) lane_gate_apply_8(dst, src, g, n);
    else if (h == 4) lane_gate_apply_4(dst, src, g, n);
    else lane_gate_apply_2(dst, src, g, n);
}

static void lane_gate_backward(float *grad, const float *input, const float *g, double *total,
                               int h, size_t n)
{
    if (h == 8) lane_gate_backward_8(grad, input, g, total, n);
    else if (h == 4) lane_gate_backward_4(grad, input, g, total, n);
    else lane_gate_backward_2(grad, input, g, total, n);
}

/* A gate across the last bit of the vectors' index (pairs of consecutive vectors x0, x1)
 * and the lanes' first bit (weight 8): out_i = sum over k, f of E[i][k][f] * x_k[e ^ 8f],
 * E[i][k][f][e] = g[2i + j][2k + (j ^ f)] with j the lane's bit. */
static void cross_gate_apply(float *dst, const float *src, const float *g, size_t n)
{
    lane16 E[2][2][2];
        for (int i = 0; i < 2; i++)
        for (int k = 0; k < 2; k++)
            for (int f = 0; f < 2; f++)
                for (int e = 0; e < 16; e++) {
                    const int j = (e >> 3) & 1;
                    E[i][k][f][e] = g[4 * (2 * i + j) + 2 * k + (j ^ f)];
                }
    for (size_t at = 0; at < n; at += 32) {
        lane16 x0, x1;
        memcpy(&x0, src + at, sizeof x0);
        memcpy(&x1, src + at + 16, sizeof x1);
        const lane16 s0 = XOR16(x0, 8), s1 = XOR16(x1, 8);
        const lane16 y0 = E[0][0][0] * x0 + E[0][0][1] * s0 + E[0][1][0] * x1 + E[0][1][1] * s1;
        const lane16 y1 = E[1][0][0] * x0 + E[1][0][1] * s0 + E[1][1][0] * x1 + E[1][1][1] * s1;
        memcpy(dst + at, &y0, sizeof y0);
        memcpy(dst + at + 16, &y1, sizeof y1);
    }
}

static void cross_gate_backward(float *grad, const float *input, const float *g, double *total,
                                size_t n)
{
    /* grad_in_k = sum over i, f of F[k][i][f] * y_i[e ^ 8f], F[k][i][f][e] = g[2i + (m ^ f)][2k
     * + m] with m the lane's bit; the gradient of g[2i + j][2k + (j ^ f)] sums y_i * x_k[e ^ 8f]
     * over lanes with bit j */
    lane16 F[2][2][2], acc[2][2][2];
        for (int k = 0; k < 2; k++)
        for (int i = 0; i < 2; i++)
            for (int f = 0; f < 2; f++) {
                acc[i][k][f] = (lane16){0};
                for (int e = 0; e < 16; e++) {
                    const int m = (e >> 3) & 1;
                    F[k][i][f][e] = g[4 * (2 * i + (m ^ f)) + 2 * k + m];
                }
            }
    for (size_t at = 0; at < n; at += 32) {
        lane16 x[2], y[2];
        memcpy(&x[0], input + at, sizeof x[0]);
        memcpy(&x[1], input + at + 16, sizeof x[1]);
        memcpy(&y[0], grad + at, sizeof y[0]);
        memcpy(&y[1], grad + at + 16, sizeof y[1]);
        const lane16 sx[2] = {XOR16(x[0], 8), XOR16(x[1], 8)};
        const lane16 sy[2] = {XOR16(y[0], 8), XOR16(y[1], 8)};
        for (int i = 0; i < 2; i++)
            for (int k = 0; k < 2; k++) {
                acc[i][k][0] += y[i] * x[k];
                acc[i][k][1] += y[i] * sx[k];
            }
        for (int k = 0; k < 2; k++) {
            const lane16 r = F[k][0][0] * y[0] + F[k][0][1] * sy[0] + F[k][1][0] * y[1] +
                             F[k][1][1] * sy[1];
            memcpy(grad + at + 16 * k, &r, sizeof r);
        }
    }
    for (int i = 0; i < 2; i++)
        for (int k = 0; k < 2; k++)
            for (int f = 0; f < 2; f++)
                for (int e = 0; e < 16; e++) {
                    const int j = (e >> 3) & 1;
                    total[4 * (2 * i + j) + 2 * k + (j ^ f)] += acc[i][k][f][e];
                }
}

INLINE void copy_in(float *RESTRICT tile, const float *RESTRICT state, int rows, int64_t R,
                    int T)
{
    if (R == T) {
        memcpy(tile, state, sizeof(float) * (size_t)rows * (size_t)T);
        return;
    }
    for (int r = 0; r < rows; r++)
        memcpy(tile + (size_t)r * T, state + (size_t)r * R, sizeof(float) * (size_t)T);
}

INLINE void copy_out(float *RESTRICT state, const float *RESTRICT tile, int rows, int64_t R,
                     int T)
{
    if (R == T) {
        memcpy(state, tile, sizeof(float) * (size_t)rows * (size_t)T);
        return;
    }
    for (int r = 0; r < rows; r++)
        memcpy(state + (size_t)r * R, tile + (size_t)r * T, sizeof(float) * (size_t)T);
}

#define MAX_BLOCKS 4

/* One step of a pass on its tile: a gate on bits (p, p+1) of the tile viewed as rows of T
 * numbers (w row bits), or a Kronecker block of gates on the last b = log2(T) bits (the
 * state's last bits: R == T), applied to each row of T numbers. */
typedef struct {
    int kind; /* 0: one gate on rows of T; 1: a block; 2: a gate across rows of 16 and their
               * lanes; 3: a gate on lanes (p: the weight of its high lane bit) */
    int T, w, p;
    int first, count; /* its gates: first, ..., first + count - 1 */
    int block;        /* kind 1: which of the pass's blocks */
} Op;

/* A pass: the state viewed as (L, 2^w, R), tiles of 2^w rows by T columns (see the top), and
 * its steps, in order. */
typedef struct {
    int64_t L, R, per_l, tiles;
    int w, rows, T, n_gates, n_ops, n_blocks;
    size_t tile_size;
    size_t tile_stride; /* backward: floats from one scratch tile to the next */
    const float *gates; /* n_gates x 16, in the order of the steps (own_gates) */
    float own_gates[MAX_GATES * 16];
    Op ops[MAX_GATES];
    int low_pos[MAX_GATES]; /* a block's gates' first bits within its b bits */
    int activate;           /* forward: apply the activation to the output (slope 0: ReLU);
                             * backward: take the input's gradient back through the
                             * activation that produced the input */
    float slope;
    int want_squares;       /* forward: sum the squares of the output */
    int want_dot;           /* backward: sum input times the input's gradient */
    float block[MAX_BLOCKS][MAX_BLOCK * MAX_BLOCK], block_t[MAX_BLOCKS][MAX_BLOCK * MAX_BLOCK];
} Pass;

static int log2_exact(int64_t n)
{
    int k = 0;
    while (((int64_t)1 << k) < n) k++;
    return ((int64_t)1 << k) == n ? k : -1;
}

/* Reads the steps: spec holds (kind, T, p) per gate, in order; consecutive block gates with
 * the same T on disjoint bits form one block. Returns 1 for anything it cannot run. */
static int pass_setup(Pass *p, int64_t L, int w, int64_t R, int T, const float *flat,
                      const int *gate_at, float first_scale, const int *spec, int n_gates)
{
    if (T < 8 || T > MAX_T || log2_exact(T) < 0 || R % T != 0 || w < 0 || w > 16) return 1;
    if (L < 1 || n_gates < 0 || n_gates > MAX_GATES) return 1;
    p->L = L, p->R = R, p->w = w, p->rows = 1 << w, p->T = T;
    p->per_l = R / T, p->tiles = L * (R / T), p->tile_size = (size_t)p->rows * (size_t)T;
    p->tile_stride = (p->tile_size + 15) / 16 * 16; /* (whole cache lines: see line_aligned) */
    /* the pass's gates side by side, the first times first_scale */
    for (int k = 0; k < n_gates; k++)
        for (int e = 0; e < 16; e++)
            p->own_gates[16 * k + e] = flat[gate_at[k] + e] * (k ? 1.0f : first_scale);
    const float *gates = p->own_gates;
    p->gates = gates, p->n_gates = n_gates, p->n_ops = 0, p->n_blocks = 0;
    p->activate = 0, p->slope = 0.0f, p->want_squares = p->want_dot = 0;
    int covered = 0;
    for (int k = 0; k < n_gates; k++) {
        const int kind = spec[3 * k], pos = spec[3 * k + 2];
        const int view = spec[3 * k + 1] ? spec[3 * k + 1] : T; /* 0: the tile's width */
        const int b = log2_exact(view);
        if (b < 3 || view > T || T % view != 0) return 1;
        if (kind == 0) {
            const int rows_bits = w + log2_exact(T / view);
            covered = 0;
            if (pos >= 0 && pos <= rows_bits - 2) {
                p->ops[p->n_ops++] = (Op){0, view, rows_bits, pos, k, 1, -1};
                continue;
            }
            /* rows of 16: a gate reaching into the vectors' lanes */
            if (view != 16 || pos < rows_bits - 1 || pos > rows_bits + 2 || rows_bits < 1)
                return 1;
            if (pos == rows_bits - 1)
                p->ops[p->n_ops++] = (Op){2, view, rows_bits, 0, k, 1, -1};
            else
                p->ops[p->n_ops++] = (Op){3, view, rows_bits, 8 >> (pos - rows_bits), k, 1, -1};
            continue;
        }
        if (kind != 1 || view > MAX_BLOCK || R != T || pos < 0 || pos > b - 2) return 1;
        Op *last = p->n_ops ? &p->ops[p->n_ops - 1] : NULL;
        if (last && last->kind == 1 && last->T == view && !(covered & (3 << pos))) {
            last->count++;
        } else {
            if (p->n_blocks == MAX_BLOCKS) return 1;
            p->ops[p->n_ops++] = (Op){1, view, w + log2_exact(T / view), 0, k, 1, p->n_blocks++};
            covered = 0;
        }
        covered |= 3 << pos;
        p->low_pos[k] = pos;
    }
    for (int o = 0; o < p->n_ops; o++) {
        const Op *op = &p->ops[o];
        if (op->kind == 1)
            low_block(gates + 16 * op->first, p->low_pos + op->first, op->count,
                      log2_exact(op->T), p->block[op->block], p->block_t[op->block]);
    }
    return 0;
}

static size_t op_rows(const Pass *p, const Op *op) { return p->tile_size / (size_t)op->T; }

/* sum of a[e] * b[e] over a tile, in sixteen running sums (so that it vectorises) */
static double dot_product(const float *a, const float *b, size_t n)
{
    typedef float sums16 __attribute__((vector_size(64)));
    sums16 acc = {0};
    size_t e = 0;
    for (; e + 16 <= n; e += 16) {
        sums16 x, y;
        memcpy(&x, a + e, sizeof x);
        memcpy(&y, b + e, sizeof y);
        acc += x * y;
    }
    double total = 0.0;
    for (int k = 0; k < 16; k++) total += acc[k];
    for (; e < n; e++) total += (double)a[e] * b[e];
    return total;
}

static size_t tile_offset(const Pass *p, int64_t i)
{
    return (size_t)(i / p->per_l) * (size_t)p->rows * (size_t)p->R +
           (size_t)(i % p->per_l) * (size_t)p->T;
}

/* Tile i of the forward pass (T a constant where this is inlined); returns the sum of the
 * squares of its output (after the activation, where the pass applies it). */
INLINE double forward_tile(const Pass *p, int64_t i, const float *x, float *out, float *tile,
                           const int T)
{
    const size_t at = tile_offset(p, i);
    copy_in(tile, x + at, p->rows, p->R, T);
    for (int o = 0; o < p->n_ops; o++) {
        const Op *op = &p->ops[o];
        const float *g = p->gates + 16 * op->first;
        if (op->kind == 0)
            gate_apply(tile, tile, g, op->w, op->p, op->T);
        else if (op->kind == 2)
            cross_gate_apply(tile, tile, g, p->tile_size);
        else if (op->kind == 3)
            lane_gate_apply(tile, tile, g, op->p, p->tile_size);
        else
            rows_apply(tile, (int)op_rows(p, op), p->block_t[op->block], op->T);
    }
    if (p->activate) {
        const float slope = p->slope;
        for (size_t e = 0; e < p->tile_size; e++) tile[e] = tile[e] > 0.0f ? tile[e] : tile[e] * slope;
    }
    const double squares = p->want_squares ? dot_product(tile, tile, p->tile_size) : 0.0;
    copy_out(out + at, tile, p->rows, p->R, T);
    return squares;
}

/* Tile i of the backward pass. Its scratch: the input of every step (n_ops tiles, each
 * computed once from the pass's input; the last step's output is not needed), the gradient
 * tile and a block's gradient over one tile; total: this thread's sums of the gates'
 * gradients (16 per gate), then of each block's (MAX_BLOCK^2 each). */
INLINE double backward_tile(const Pass *p, int64_t i, const float *x, const float *grad_out,
                            float *grad_in, float *scratch, double *total, const int T)
{
    const size_t tile_size = p->tile_size, stride = p->tile_stride;
    const int n_ops = p->n_ops;
    float *inputs = scratch, *grad = scratch + stride * (size_t)n_ops;
    float *d_block = grad + stride;
    const size_t at = tile_offset(p, i);
    copy_in(inputs, x + at, p->rows, p->R, T);
    for (int o = 0; o < n_ops - 1; o++) {
        const Op *op = &p->ops[o];
        float *in = inputs + stride * (size_t)o, *next = in + stride;
        const float *g = p->gates + 16 * op->first;
        if (op->kind == 0) {
            gate_apply(next, in, g, op->w, op->p, op->T);
        } else if (op->kind == 2) {
            cross_gate_apply(next, in, g, tile_size);
        } else if (op->kind == 3) {
            lane_gate_apply(next, in, g, op->p, tile_size);
        } else {
            memcpy(next, in, sizeof(float) * tile_size);
            rows_apply(next, (int)op_rows(p, op), p->block_t[op->block], op->T);
        }
    }
    copy_in(grad, grad_out + at, p->rows, p->R, T);
    double *block_totals = total + 16 * (size_t)p->n_gates;
    for (int o = n_ops - 1; o >= 0; o--) {
        const Op *op = &p->ops[o];
        const float *in = inputs + stride * (size_t)o;
        const float *g = p->gates + 16 * op->first;
        double *sums_g = total + 16 * op->first;
        if (op->kind == 0) {
            gate_backward(grad, in, g, sums_g, op->w, op->p, op->T);
            continue;
        }
        if (op->kind == 2) {
            cross_gate_backward(grad, in, g, sums_g, tile_size);
            continue;
        }
        if (op->kind == 3) {
            lane_gate_backward(grad, in, g, sums_g, op->p, tile_size);
            continue;
        }
        const int rows = (int)op_rows(p, op), size = op->T * op->T;
        double *sums = block_totals + (size_t)op->block * MAX_BLOCK * MAX_BLOCK;
        memset(d_block, 0, sizeof(float) * (size_t)size);
        rows_outer(d_block, grad, in, rows, op->T);
        for (int e = 0; e < size; e++) sums[e] += d_block[e];
        rows_apply(grad, rows, p->block[op->block], op->T); /* block^T times each row */
    }
    /* <input, gradient of the input>, which the normalisation before the pass needs */
    const double dot = p->want_dot ? dot_product(inputs, grad, tile_size) : 0.0;
    if (p->activate) { /* (the input is positive exactly where the activation's was) */
        const float slope = p->slope;
        for (size_t e = 0; e < tile_size; e++)
            grad[e] = inputs[e] > 0.0f ? grad[e] : grad[e] * slope;
    }
    if (grad_in != NULL) copy_out(grad_in + at, grad, p->rows, p->R, T);
    return dot;
}

/* One copy of each tile function per tile width, so that the compiler knows T and unrolls and
 * vectorises the column loops (also inside OpenMP's outlined loop bodies). */
#define FOR_EACH_WIDTH(CALL)     \
    switch (p->T) {              \
    case 8: return CALL(8);      \
    case 16: return CALL(16);    \
    case 32: return CALL(32);    \
    case 64: return CALL(64);    \
    default: return CALL(128);   \
    }

static double forward_tile_any(const Pass *p, int64_t i, const float *x, float *out, float *tile)
{
#define FORWARD(width) forward_tile(p, i, x, out, tile, width)
    FOR_EACH_WIDTH(FORWARD)
#undef FORWARD
}

static double backward_tile_any(const Pass *p, int64_t i, const float *x, const float *grad_out,
                                float *grad_in, float *scratch, double *total)
{
#define BACKWARD(width) backward_tile(p, i, x, grad_out, grad_in, scratch, total, width)
    FOR_EACH_WIDTH(BACKWARD)
#undef BACKWARD
}

/* Tiles are read and written as 64-byte vectors, so their buffers start on a cache line: a
 * vector across two lines costs two loads (measured: a malloc'ed, 16-byte aligned scratch
 * made the low pass's backward a third slower). */
#define LINE_FLOATS 16
static size_t whole_lines(size_t floats)
{
    return (floats + LINE_FLOATS - 1) / LINE_FLOATS * LINE_FLOATS;
}

/* floats numbers from a cache line on, or NULL; free *block afterwards */
static float *line_aligned(size_t floats, void **block)
{
    *block = malloc(sizeof(float) * floats + 64);
    if (*block == NULL) return NULL;
    return (float *)(((uintptr_t)*block + 63) & ~(uintptr_t)63);
}

/* out = the pass applied to x (out may be x). Its gates: 16 floats each at flat + gate_at[k]
 * in the order of the steps, the first one times first_scale; spec: (kind, T, p) per gate
 * (kind 0: a gate on bits p, p+1 of the tile viewed as rows of T numbers, 0 for the tile's
 * own width; kind 1: a gate on bits p, p+1 of the last log2(T) bits, consecutive ones making
 * one Kronecker block); activate: then apply the activation (slope 0: ReLU, else leaky);
 * squares (unless NULL): the sum of the squares of the output; threads: how many share the
 * tiles. Returns 0, or -1 for a shape it does not handle, -2 when memory runs out. */
EXPORT int adtn_pass_forward(const float *x, float *out, int64_t L, int w, int64_t R, int T,
                             const float *flat, const int *gate_at, float first_scale,
                             const int *spec, int n_gates, int activate, float slope,
                             double *squares, int threads)
{
    Pass *p = malloc(sizeof(Pass));
    if (p == NULL) return -2;
    if (threads < 1 || pass_setup(p, L, w, R, T, flat, gate_at, first_scale, spec, n_gates)) {
        free(p);
        return -1;
    }
    p->activate = activate, p->slope = slope, p->want_squares = squares != NULL;
    const size_t floats = whole_lines(p->tile_size);
    void *block;
    float *memory = line_aligned(floats * (size_t)threads, &block);
    if (memory == NULL) {
        free(p);
        return -2;
    }
    double sum = 0.0;
#pragma omp parallel for num_threads(threads) schedule(static) reduction(+ : sum) if (threads > 1)
    for (int64_t i = 0; i < p->tiles; i++)
        sum += forward_tile_any(p, i, x, out, memory + floats * (size_t)omp_get_thread_num());
    free(block);
    free(p);
    if (squares != NULL) *squares = sum;
    return 0;
}

/* From the pass's input x and its output's gradient grad_out: the input's gradient in
 * grad_in (skipped when NULL; it may be grad_out), each gate's gradient at d_flat +
 * gate_at[k] (the gates as for adtn_pass_forward; the first one's gradient is that of its
 * unscaled values) and, unless NULL, <x, the input's gradient> in dot; with activate, the
 * input's gradient is then taken back through the activation (slope 0: ReLU) that gave x. */
EXPORT int adtn_pass_backward(const float *x, const float *grad_out, float *grad_in, int64_t L,
                              int w, int64_t R, int T, const float *flat, const int *gate_at,
                              float first_scale, const int *spec, int n_gates, float *d_flat,
                              double *dot, int activate, float slope, int threads)
{
    Pass *p = malloc(sizeof(Pass));
    if (p == NULL) return -2;
    if (threads < 1 || pass_setup(p, L, w, R, T, flat, gate_at, first_scale, spec, n_gates)) {
        free(p);
        return -1;
    }
    p->want_dot = dot != NULL;
    p->activate = activate, p->slope = slope;
    /* (each tile of the scratch on a cache line: whole lines per tile and per thread) */
    const size_t floats = p->tile_stride * (size_t)(p->n_ops + 1) + MAX_BLOCK * MAX_BLOCK;
    const size_t sums = (size_t)16 * n_gates + (size_t)p->n_blocks * MAX_BLOCK * MAX_BLOCK;
    void *block;
    float *memory = line_aligned(floats * (size_t)threads, &block);
    double *totals = calloc(sums * (size_t)threads, sizeof(double));
    if (memory == NULL || totals == NULL) {
        free(block);
        free(totals);
        free(p);
        return -2;
    }
    double products = 0.0;
#pragma omp parallel for num_threads(threads) schedule(static) reduction(+ : products) \
    if (threads > 1)
    for (int64_t i = 0; i < p->tiles; i++) {
        const size_t thread = (size_t)omp_get_thread_num();
        products += backward_tile_any(p, i, x, grad_out, grad_in, memory + floats * thread,
                                      totals + sums * thread);
    }
    if (dot != NULL) *dot = products;
    for (int t = 1; t < threads; t++)
        for (size_t e = 0; e < sums; e++) totals[e] += totals[sums * (size_t)t + e];
    float d_gates[MAX_GATES * 16];
    for (int o = 0; o < p->n_ops; o++) {
        const Op *op = &p->ops[o];
        if (op->kind != 1) {
            for (int e = 0; e < 16; e++) d_gates[16 * op->first + e] = (float)totals[16 * op->first + e];
            continue;
        }
        /* (a block's sums are laid out T x T, at the start of its MAX_BLOCK^2 slot) */
        const double *block_sums = totals + 16 * (size_t)n_gates +
                                   (size_t)op->block * MAX_BLOCK * MAX_BLOCK;
        low_block_backward(p->gates + 16 * op->first, p->low_pos + op->first, op->count,
                           log2_exact(op->T), block_sums, d_gates + 16 * op->first);
    }
    for (int k = 0; k < n_gates; k++)
        for (int e = 0; e < 16; e++)
            d_flat[gate_at[k] + e] = d_gates[16 * k + e] * (k ? 1.0f : first_scale);
    free(block);
    free(totals);
    free(p);
    return 0;
}

/* Back through the activation and the normalisation between two layers, in place: grad (the
 * gradient with respect to the activated state a, through the next layer) becomes
 * (grad - coefficient * a), times the activation's slope where a <= 0 (when activate). */
EXPORT void adtn_transition(float *grad, const float *a, int64_t n, float coefficient,
                            int activate, float slope, int threads)
{
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1)
    for (int64_t i = 0; i < n; i++) {
        const float g = grad[i] - coefficient * a[i];
        grad[i] = (activate && !(a[i] > 0.0f)) ? g * slope : g;
    }
}

/* out[j] = state[index[j]] for j < n; returns the sum of the squares of out. */
EXPORT double adtn_gather(const float *state, const int64_t *index, int64_t n, float *out,
                          int threads)
{
    double squares = 0.0;
#pragma omp parallel for num_threads(threads) schedule(static) reduction(+ : squares) \
    if (threads > 1)
    for (int64_t block = 0; block < n; block += 4096) {
        const int64_t end = block + 4096 < n ? block + 4096 : n;
        for (int64_t j = block; j < end; j++) out[j] = state[index[j]];
        squares += dot_product(out + block, out + block, (size_t)(end - block));
    }
    return squares;
}

/* The runs of a weight row's columns that lie one after another in the state (col_at[c + 1]
 * == col_at[c] + 1; with interleaved indices, as many as the state's last bits that are
 * column bits): their first columns into start, then cols. Returns how many, or -1 when
 * memory runs out (*start is then NULL). */
static int64_t column_runs(const int32_t *col_at, int64_t cols, int64_t **start)
{
    int64_t *runs = malloc(sizeof(int64_t) * (size_t)(cols + 1));
    *start = runs;
    if (runs == NULL) return -1;
    int64_t n = 0;
    for (int64_t c = 0; c < cols; c++)
        if (c == 0 || col_at[c] != col_at[c - 1] + 1) runs[n++] = c;
    runs[n] = cols;
    return n;
}

typedef float run8 __attribute__((vector_size(32)));

/* dst[e] = src[e], eight numbers a move */
INLINE void copy_run(float *RESTRICT dst, const float *RESTRICT src, int64_t n)
{
    int64_t e = 0;
    for (; e + 8 <= n; e += 8) memcpy(dst + e, src + e, sizeof(run8));
    for (; e < n; e++) dst[e] = src[e];
}

/* dst[e] = a * g[e] - b * t[e], eight numbers a step */
INLINE void scaled_run(float *RESTRICT dst, const float *g, const float *t, float a, float b,
                       int64_t n)
{
    int64_t e = 0;
    for (; e + 8 <= n; e += 8) {
        run8 x, y;
        memcpy(&x, g + e, sizeof x);
        memcpy(&y, t + e, sizeof y);
        const run8 r = a * x - b * y;
        memcpy(dst + e, &r, sizeof r);
    }
    for (; e < n; e++) dst[e] = a * g[e] - b * t[e];
}

/* adtn_gather where the state's entry of out[r * cols + c] is row_at[r] + col_at[c]: two
 * small tables instead of an index array as long as the weight; each row copied by runs of
 * consecutive entries. Returns the sum of the squares of out, or -1 when memory runs out. */
EXPORT double adtn_gather_grid(const float *state, const int64_t *row_at, int64_t rows,
                               const int32_t *col_at, int64_t cols, float *out, int threads)
{
    int64_t *start;
    const int64_t n_runs = column_runs(col_at, cols, &start);
    if (n_runs < 0) return -1.0;
    double squares = 0.0;
#pragma omp parallel for num_threads(threads) schedule(static) reduction(+ : squares) \
    if (threads > 1)
    for (int64_t r = 0; r < rows; r++) {
        const float *base = state + row_at[r];
        float *row = out + r * cols;
        for (int64_t k = 0; k < n_runs; k++)
            copy_run(row + start[k], base + col_at[start[k]], start[k + 1] - start[k]);
        squares += dot_product(row, row, (size_t)cols);
    }
    free(start);
    return squares;
}

/* adtn_scatter_scaled with adtn_gather_grid's tables: out (size numbers) is zeroed, then
 * out[row_at[r] + col_at[c]] = a * grad[k] - b * tensor[k], k = r * cols + c. Returns 0, or
 * -2 when memory runs out. */
EXPORT int adtn_scatter_grid(const float *grad, const float *tensor, const int64_t *row_at,
                             int64_t rows, const int32_t *col_at, int64_t cols, int64_t size,
                             float a, float b, float *out, int threads)
{
    int64_t *start;
    const int64_t n_runs = column_runs(col_at, cols, &start);
    if (n_runs < 0) return -2;
    memset(out, 0, sizeof(float) * (size_t)size);
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1)
    for (int64_t r = 0; r < rows; r++) {
        float *base = out + row_at[r];
        const float *g = grad + r * cols, *t = tensor + r * cols;
        for (int64_t k = 0; k < n_runs; k++)
            scaled_run(base + col_at[start[k]], g + start[k], t + start[k], a, b,
                       start[k + 1] - start[k]);
    }
    free(start);
    return 0;
}

/* The state's gradient from the weight's: out[i] = a * grad[k] - b * tensor[k] with
 * k = scatter[i], or 0 where k == n (a padding entry of the state). */
EXPORT void adtn_scatter_scaled(const float *grad, const float *tensor, const int64_t *scatter,
                                int64_t size, int64_t n, float a, float b, float *out,
                                int threads)
{
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1)
    for (int64_t i = 0; i < size; i++) {
        const int64_t k = scatter[i];
        out[i] = k < n ? a * grad[k] - b * tensor[k] : 0.0f;
    }
}

/* The first layer, which grows the product state: state_{k+1} = state_k viewed as rows of
 * a[k] numbers, times the a[k] x b[k] matrix mats[k] (row-major), from state_0 = (1);
 * states[k] holds state_k (states[0] is read: the one number 1); then, on request, the
 * activation on the last state and the sum of its squares. With a of 1 or 2, these are
 * poor matrix products for a BLAS and cost one trip through memory here. Returns 0, or -1
 * for sizes it does not handle. */
#define MAX_GROW 64

static int grow_rows(int n, const int *a, const int *b, int64_t *rows)
{
    int64_t size = 1;
    for (int k = 0; k < n; k++) {
        if (a[k] < 1 || b[k] < 1 || b[k] > MAX_GROW || a[k] > MAX_GROW || size % a[k]) return -1;
        rows[k] = size / a[k];
        size = rows[k] * b[k];
    }
    return 0;
}

/* one application of the growth: out (rows x B) = in (rows x A) times m (A x B); A and B
 * constants where it is inlined, so that the loops vectorise */
INLINE void grow_step(const float *RESTRICT in, const float *RESTRICT m, float *RESTRICT out,
                      int64_t rows, const int A, const int B)
{
    for (int64_t r = 0; r < rows; r++) {
        float acc[MAX_GROW];
        for (int j = 0; j < B; j++) acc[j] = in[r * A] * m[j];
        for (int i = 1; i < A; i++)
            for (int j = 0; j < B; j++) acc[j] += in[r * A + i] * m[i * B + j];
        memcpy(out + r * B, acc, sizeof(float) * (size_t)B);
    }
}

/* back through one application, in place: grad (rows x B) becomes the input's gradient
 * (rows x A, at the start of the same memory; a row's is written after that row is read,
 * and lies below the rows not yet read since A <= B); d_m (A x B) += in^T grad, rows from
 * first on */
INLINE void grow_step_backward_rest(const float *RESTRICT in, const float *RESTRICT m,
                                    float *grad, int64_t first, int64_t rows, double *total,
                                    const int A, const int B)
{
    for (int64_t lo = first; lo < rows; lo += 256) {
        const int64_t hi = lo + 256 < rows ? lo + 256 : rows;
        float part[MAX_GROW * MAX_GROW];
        memset(part, 0, sizeof(float) * (size_t)(A * B));
        for (int64_t r = lo; r < hi; r++) {
            float g[MAX_GROW], d_in[MAX_GROW];
            memcpy(g, grad + r * B, sizeof(float) * (size_t)B);
            for (int i = 0; i < A; i++) {
                const float x = in[r * A + i];
                float sum = 0.0f;
                for (int j = 0; j < B; j++) {
                    part[i * B + j] += x * g[j];
                    sum += g[j] * m[i * B + j];
                }
                d_in[i] = sum;
            }
            memcpy(grad + r * A, d_in, sizeof(float) * (size_t)A);
        }
        for (int e = 0; e < A * B; e++) total[e] += part[e];
    }
}

/* The brick layout's step, 2 -> 8 numbers a row, eight rows at a time (16 inputs, 64
 * outputs), with lane permutations: a row's two inputs broadcast over its half of a vector. */
#define HALVES(x, a, b) SHUFFLE16(x, a, a, a, a, a, a, a, a, b, b, b, b, b, b, b, b)

static int64_t grow_step_2_8(const float *RESTRICT in, const float *RESTRICT m,
                             float *RESTRICT out, int64_t rows)
{
    lane16 m0, m1;
    for (int j = 0; j < 16; j++) m0[j] = m[j % 8], m1[j] = m[8 + j % 8];
    int64_t r = 0;
    for (; r + 8 <= rows; r += 8) {
        lane16 x;
        memcpy(&x, in + 2 * r, sizeof x);
        const lane16 y0 = HALVES(x, 0, 2) * m0 + HALVES(x, 1, 3) * m1;
        const lane16 y1 = HALVES(x, 4, 6) * m0 + HALVES(x, 5, 7) * m1;
        const lane16 y2 = HALVES(x, 8, 10) * m0 + HALVES(x, 9, 11) * m1;
        const lane16 y3 = HALVES(x, 12, 14) * m0 + HALVES(x, 13, 15) * m1;
        memcpy(out + 8 * r, &y0, sizeof y0);
        memcpy(out + 8 * r + 16, &y1, sizeof y1);
        memcpy(out + 8 * r + 32, &y2, sizeof y2);
        memcpy(out + 8 * r + 48, &y3, sizeof y3);
    }
    return r; /* (rows done; the caller finishes the rest) */
}

/* Its backward, eight rows at a time: d_m's sums per half-vector; the input's gradient from
 * the products g * m_i, each half summed by three permute-and-add steps (which leave row
 * 2q+h's two sums in lanes 8h and 8h+4 of vector q), then gathered in row order. */
#define BLEND16(a, b, ...) SHUFFLE2_16(a, b, __VA_ARGS__)
INLINE lane16 row_sums_2_8(lane16 g, lane16 m0, lane16 m1)
{
    const lane16 p0 = g * m0, p1 = g * m1;
    /* lanes 0-3 and 8-11 from p0, 4-7 and 12-15 from p1; then each lane plus lane ^ 4 of
     * the other choice */
    const lane16 a = BLEND16(p0, p1, 0, 1, 2, 3, 20, 21, 22, 23, 8, 9, 10, 11, 28, 29, 30, 31);
    const lane16 b = BLEND16(p1, p0, 0, 1, 2, 3, 20, 21, 22, 23, 8, 9, 10, 11, 28, 29, 30, 31);
    lane16 r = a + XOR16(b, 4);
    r += XOR16(r, 2);
    return r + XOR16(r, 1);
}

static int64_t grow_step_backward_2_8(const float *RESTRICT in, const float *RESTRICT m,
                                      float *grad, int64_t rows, double *total)
{
    lane16 m0, m1;
    for (int j = 0; j < 16; j++) m0[j] = m[j % 8], m1[j] = m[8 + j % 8];
    int64_t r = 0;
    while (r + 8 <= rows) {
        lane16 acc0 = {0}, acc1 = {0};
        const int64_t end = r + 1024 < rows ? r + 1024 : rows;
        for (; r + 8 <= end; r += 8) {
            lane16 x, g[4], s[4];
            memcpy(&x, in + 2 * r, sizeof x);
            memcpy(g, grad + 8 * r, sizeof g);
            acc0 += HALVES(x, 0, 2) * g[0] + HALVES(x, 4, 6) * g[1] + HALVES(x, 8, 10) * g[2] +
                    HALVES(x, 12, 14) * g[3];
            acc1 += HALVES(x, 1, 3) * g[0] + HALVES(x, 5, 7) * g[1] + HALVES(x, 9, 11) * g[2] +
                    HALVES(x, 13, 15) * g[3];
            for (int q = 0; q < 4; q++) s[q] = row_sums_2_8(g[q], m0, m1);
            /* lanes 0, 4, 8, 12 of s[q]: rows 2q, 2q+1's two sums; into row order */
            const lane16 v01 = BLEND16(s[0], XOR16(s[1], 1), 0, 17, 2, 19, 4, 21, 6, 23, 8, 25,
                                       10, 27, 12, 29, 14, 31);
            const lane16 v23 = BLEND16(s[2], XOR16(s[3], 1), 0, 17, 2, 19, 4, 21, 6, 23, 8, 25,
                                       10, 27, 12, 29, 14, 31);
            const lane16 w = BLEND16(v01, XOR16(v23, 2), 0, 1, 18, 19, 4, 5, 22, 23, 8, 9, 26,
                                     27, 12, 13, 30, 31);
            const lane16 d = SHUFFLE16(w, 0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
            memcpy(grad + 2 * r, &d, sizeof d); /* (below rows r.. not yet read: 2r + 16 <= 8r) */
        }
        for (int j = 0; j < 8; j++) {
            total[j] += (double)acc0[j] + acc0[j + 8];
            total[8 + j] += (double)acc1[j] + acc1[j + 8];
        }
    }
    return r;
}

/* the shapes of the brick layout's growth as constants, any other at run time */
#define GROW_SHAPES(CALL, A, B)                                                               \
    if (A == 1 && B == 4) CALL(1, 4);                                                         \
    else if (A == 2 && B == 8) CALL(2, 8);                                                    \
    else if (A == 2 && B == 4) CALL(2, 4);                                                    \
    else CALL(A, B);

/* Then the activation (slope 0: ReLU) in place on the last state, where activate; returns
 * the sum of the squares of its numbers (afterwards). */
static double activate_and_square(float *state, int64_t n, int activate, float slope)
{
    if (activate)
        for (int64_t e = 0; e < n; e++) state[e] = state[e] > 0.0f ? state[e] : state[e] * slope;
    return dot_product(state, state, (size_t)n);
}

EXPORT int adtn_grow_forward(int n, const int *a, const int *b, const float *const *mats,
                             float *const *states, int activate, float slope, double *squares)
{
    int64_t *rows = malloc(sizeof(int64_t) * (size_t)(n > 0 ? n : 1));
    if (rows == NULL) return -2;
    if (grow_rows(n, a, b, rows)) {
        free(rows);
        return -1;
    }
    for (int k = 0; k < n; k++) {
        int64_t done = 0;
        if (a[k] == 2 && b[k] == 8) done = grow_step_2_8(states[k], mats[k], states[k + 1], rows[k]);
#define FORWARD(A, B)                                                                         \
    grow_step(states[k] + done * (A), mats[k], states[k + 1] + done * (B), rows[k] - done, A, B)
        GROW_SHAPES(FORWARD, a[k], b[k])
#undef FORWARD
    }
    if (n > 0 && (activate || squares != NULL)) {
        const double total = activate_and_square(states[n], rows[n - 1] * b[n - 1], activate, slope);
        if (squares != NULL) *squares = total;
    }
    free(rows);
    return 0;
}

/* Back through adtn_grow_forward: from the gradient of state_n (grad, which is overwritten),
 * d_mats[k] (a[k] x b[k]) for every k; states as the forward pass left them (read only). */
EXPORT int adtn_grow_backward(int n, const int *a, const int *b, const float *const *mats,
                              const float *const *states, float *grad, float *const *d_mats)
{
    int64_t *rows = malloc(sizeof(int64_t) * (size_t)(n > 0 ? n : 1));
    if (rows == NULL) return -2;
    int bad = grow_rows(n, a, b, rows);
    for (int k = 0; k < n; k++) bad |= a[k] > b[k];
    if (bad) {
        free(rows);
        return -1;
    }
    for (int k = n - 1; k >= 0; k--) {
        double total[MAX_GROW * MAX_GROW] = {0};
        int64_t done = 0;
        if (a[k] == 2 && b[k] == 8)
            done = grow_step_backward_2_8(states[k], mats[k], grad, rows[k], total);
        /* (the rest in place too: its rows' gradients lie after those written so far) */
#define BACKWARD(A, B)                                                                        \
    grow_step_backward_rest(states[k], mats[k], grad, done, rows[k], total, A, B)
        GROW_SHAPES(BACKWARD, a[k], b[k])
#undef BACKWARD
        for (int e = 0; e < a[k] * b[k]; e++) d_mats[k][e] = (float)total[e];
    }
    free(rows);
    return 0;
}

/* The brick layout's first layer straight from the gates (the flat gate vector: no matrices
 * built elsewhere). Step k: kind 0, gate u's stored column as a 1 x 4 matrix (u: 4 numbers at
 * u_at[k]); kind 1, gate G (4 x 4 at g_at[k]) after gate u's column: the 2 x 8 matrix
 * M[a][4x + 2y + t] = sum over b of G[2x + y][2a + b] * u[2b + t]. */
static int gate_matrices(int n, const int *kind, const int *g_at, const int *u_at,
                         const float *values, float *mats, const float **pointers, int *a,
                         int *b)
{
    for (int k = 0; k < n; k++) {
        const float *u = values + u_at[k];
        float *m = mats + 16 * k;
        pointers[k] = m;
        if (kind[k] == 0) {
            a[k] = 1, b[k] = 4;
            for (int e = 0; e < 4; e++) m[e] = u[e];
            continue;
        }
        if (kind[k] != 1) return -1;
        const float *G = values + g_at[k];
        a[k] = 2, b[k] = 8;
        for (int i = 0; i < 2; i++)
            for (int xy = 0; xy < 4; xy++)
                for (int t = 0; t < 2; t++)
                    m[8 * i + 2 * xy + t] =
                        G[4 * xy + 2 * i] * u[t] + G[4 * xy + 2 * i + 1] * u[2 + t];
    }
    return 0;
}

EXPORT int adtn_grow_gates_forward(int n, const int *kind, const int *g_at, const int *u_at,
                                   const float *values, float *const *states, int activate,
                                   float slope, double *squares)
{
    if (n < 1 || n > 64) return -1;
    float mats[64 * 16];
    const float *pointers[64];
    int a[64], b[64];
    if (gate_matrices(n, kind, g_at, u_at, values, mats, pointers, a, b)) return -1;
    return adtn_grow_forward(n, a, b, pointers, states, activate, slope, squares);
}

/* Back through adtn_grow_gates_forward: the gates' gradients added at their places in
 * d_values (laid out as values); grad (the last state's gradient) is overwritten. */
EXPORT int adtn_grow_gates_backward(int n, const int *kind, const int *g_at, const int *u_at,
                                    const float *values, const float *const *states,
                                    float *grad, float *d_values)
{
    if (n < 1 || n > 64) return -1;
    float mats[64 * 16], d_mats[64 * 16];
    const float *pointers[64];
    float *d_pointers[64];
    int a[64], b[64];
    if (gate_matrices(n, kind, g_at, u_at, values, mats, pointers, a, b)) return -1;
    for (int k = 0; k < n; k++) d_pointers[k] = d_mats + 16 * k;
    const int code = adtn_grow_backward(n, a, b, pointers, states, grad, d_pointers);
    if (code) return code;
    for (int k = 0; k < n; k++) {
        const float *dm = d_mats + 16 * k, *u = values + u_at[k];
        float *du = d_values + u_at[k];
        if (kind[k] == 0) {
            for (int e = 0; e < 4; e++) du[e] += dm[e];
            continue;
        }
        const float *G = values + g_at[k];
        float *dG = d_values + g_at[k];
        for (int i = 0; i < 2; i++)
            for (int xy = 0; xy < 4; xy++)
                for (int t = 0; t < 2; t++) {
                    const float d = dm[8 * i + 2 * xy + t];
                    dG[4 * xy + 2 * i] += d * u[t];
                    dG[4 * xy + 2 * i + 1] += d * u[2 + t];
                    du[t] += d * G[4 * xy + 2 * i];
                    du[2 + t] += d * G[4 * xy + 2 * i + 1];
                }
    }
    return 0;
}
