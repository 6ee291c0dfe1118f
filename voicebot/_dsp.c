/* Compiled kernel for voicebot.audio.Resampler: one streaming polyphase step.
 *
 * The numpy path in audio.py is the reference. This computes the same sums: every coefficient is a
 * multiple of 2**-30 and every input an int16, so each product and each partial sum is exact in
 * double precision, and the result is bit-identical whatever order the products are added in.
 *
 * Only the buffer protocol is used (no numpy headers), so the module builds against Python alone.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <float.h>
#include <stdint.h>
#include <string.h>

#if !defined(FLT_EVAL_METHOD) || FLT_EVAL_METHOD != 0
/* Extended-precision intermediates (x87) would round twice; the numpy path then does the work. */
#error "voicebot._dsp needs double arithmetic evaluated in double precision"
#endif

/* Adding 1.5 * 2**52 to a double below 2**31 in magnitude leaves no fraction bits: the sum is rounded
 * half to even (numpy's rint, in the default rounding mode) and its low 32 bits are that integer. */
#define ROUNDING_SHIFT 6755399441055744.0

#if defined(__GNUC__) || defined(__clang__)
#define ALWAYS_INLINE inline __attribute__((always_inline))
#else
#define ALWAYS_INLINE inline
#endif

static ALWAYS_INLINE short
saturate_shifted(double shifted)
{
    int64_t bits;
    memcpy(&bits, &shifted, sizeof bits);
    int32_t value = (int32_t)(uint32_t)bits;
    return (short)(value > 32767 ? 32767 : (value < -32768 ? -32768 : value));
}

/* Outputs made at a time: their sums stay in registers while every tap is applied. */
#define BLOCK 32

#if defined(__GNUC__) || defined(__clang__)
/* Four doubles: one AVX register, two SSE2 or NEON registers, plain code elsewhere. */
typedef double quad __attribute__((vector_size(32)));
#define HAVE_VECTORS 1
/* sum += the four doubles at `at` (any alignment) times c. One load per vector, straight into a
 * register: copying a block to the stack first stalls every load on the stores before it. */
#define ADD_PRODUCT(sum, at, c)                  \
    do {                                         \
        quad loaded_;                            \
        memcpy(&loaded_, (at), sizeof loaded_);  \
        (sum) += loaded_ * (c);                  \
    } while (0)
#endif

/* GCC 11+ on x86-64 Linux: also compile the kernel for x86-64-v3 (AVX2, FMA), chosen when the module
 * loads by the CPU it runs on. A fused multiply-add gives the same sums: every product is exact. */
#if defined(HAVE_VECTORS) && !defined(__clang__) && __GNUC__ >= 11 && defined(__x86_64__) \
    && defined(__linux__) && defined(__GLIBC__)
#define KERNEL_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#endif
#ifndef KERNEL_CLONES
#define KERNEL_CLONES
#endif

/* dst[i * up] for i < n: the sum over taps t of src[offsets[t] + i] * values[t], rounded and saturated. */
KERNEL_CLONES static void
phase_outputs(const double *src, const Py_ssize_t *offsets, const double *values, Py_ssize_t taps,
              short *dst, Py_ssize_t up, Py_ssize_t n)
{
    Py_ssize_t i = 0;
#ifdef HAVE_VECTORS
    const quad shift = {ROUNDING_SHIFT, ROUNDING_SHIFT, ROUNDING_SHIFT, ROUNDING_SHIFT};
    for (; i + BLOCK <= n; i += BLOCK) {
        quad s0 = {0.0, 0.0, 0.0, 0.0}, s1 = s0, s2 = s0, s3 = s0, s4 = s0, s5 = s0, s6 = s0, s7 = s0;
        const double *block = src + i;
        for (Py_ssize_t t = 0; t < taps; t++) {
            const double *at = block + offsets[t];
            double c = values[t];
            ADD_PRODUCT(s0, at, c);
            ADD_PRODUCT(s1, at + 4, c);
            ADD_PRODUCT(s2, at + 8, c);
            ADD_PRODUCT(s3, at + 12, c);
            ADD_PRODUCT(s4, at + 16, c);
            ADD_PRODUCT(s5, at + 20, c);
            ADD_PRODUCT(s6, at + 24, c);
            ADD_PRODUCT(s7, at + 28, c);
        }
        quad shifted[8] = {s0 + shift, s1 + shift, s2 + shift, s3 + shift,
                           s4 + shift, s5 + shift, s6 + shift, s7 + shift};
        double sums[BLOCK];
        memcpy(sums, shifted, sizeof sums);
        short *out = dst + i * up;
        for (int b = 0; b < BLOCK; b++) {
            out[b * up] = saturate_shifted(sums[b]);
        }
    }
#endif
    for (; i < n; i++) {
        double sum = 0.0;
        for (Py_ssize_t t = 0; t < taps; t++) {
            sum += src[offsets[t] + i] * values[t];
        }
        dst[i * up] = saturate_shifted(sum + ROUNDING_SHIFT);
    }
}

static int
get_buffer(PyObject *obj, Py_buffer *view, const char *name, const char *format, int writable)
{
    int flags = PyBUF_FORMAT | PyBUF_STRIDES | (writable ? PyBUF_WRITABLE : 0);
    if (PyObject_GetBuffer(obj, view, flags) != 0) {
        return -1;
    }
    if (view->ndim != 1 || view->format == NULL || strcmp(view->format, format) != 0) {
        PyErr_Format(PyExc_TypeError, "%s must be a 1-D buffer of format '%s'", name, format);
        PyBuffer_Release(view);
        return -1;
    }
    return 0;
}

static int
is_contiguous(const Py_buffer *view)
{
    return view->strides == NULL || view->strides[0] == view->itemsize;
}

/* polyphase_step(out, history, chunk, taps, held, up, down, first, keep_start)
 *
 * The stream's inputs, from the first one the next output needs, are history[:held] then chunk.
 * Output k (a global index; out[0] is output `first`) is phase p = k % up of block q = k // up, and is
 * the sum over pos of input[(q - first // up) * down + pos] * taps[p * span + pos]; it is rounded half
 * to even and saturated to int16. Afterwards history[:end - keep_start] holds input[keep_start:end],
 * where end = held + len(chunk).
 */
static PyObject *
polyphase_step(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs != 9) {
        PyErr_Format(PyExc_TypeError, "polyphase_step() takes 9 arguments (%zd given)", nargs);
        return NULL;
    }
    Py_ssize_t held = PyLong_AsSsize_t(args[4]);
    Py_ssize_t up = PyLong_AsSsize_t(args[5]);
    Py_ssize_t down = PyLong_AsSsize_t(args[6]);
    Py_ssize_t first = PyLong_AsSsize_t(args[7]);
    Py_ssize_t keep_start = PyLong_AsSsize_t(args[8]);
    if (PyErr_Occurred()) {
        return NULL;
    }
    Py_buffer out, history, chunk, taps;
    if (get_buffer(args[0], &out, "out", "h", 1) != 0) {
        return NULL;
    }
    if (get_buffer(args[1], &history, "history", "d", 1) != 0) {
        PyBuffer_Release(&out);
        return NULL;
    }
    if (get_buffer(args[2], &chunk, "chunk", "h", 0) != 0) {
        PyBuffer_Release(&out);
        PyBuffer_Release(&history);
        return NULL;
    }
    if (get_buffer(args[3], &taps, "taps", "d", 0) != 0) {
        PyBuffer_Release(&out);
        PyBuffer_Release(&history);
        PyBuffer_Release(&chunk);
        return NULL;
    }
    PyObject *result = NULL;
    double *work = NULL;
    Py_ssize_t n_out = out.shape[0];
    Py_ssize_t history_len = history.shape[0];
    Py_ssize_t count = chunk.shape[0];
    Py_ssize_t taps_len = taps.shape[0];
    Py_ssize_t end = held + count;

    if (!is_contiguous(&out) || !is_contiguous(&history) || !is_contiguous(&taps)) {
        PyErr_SetString(PyExc_ValueError, "out, history and taps must be contiguous");
        goto done;
    }
    if (up < 1 || down < 1 || taps_len % up != 0 || taps_len == 0) {
        PyErr_SetString(PyExc_ValueError, "taps must hold `up` phases of equal length; up, down >= 1");
        goto done;
    }
    if (held < 0 || held > history_len || first < 0 || first > PY_SSIZE_T_MAX / 4 || keep_start < 0
        || keep_start > end || end - keep_start > history_len) {
        PyErr_SetString(PyExc_ValueError, "held, first or keep_start out of range");
        goto done;
    }
    Py_ssize_t span = taps_len / up;
    Py_ssize_t first_block = first / up;
    /* Inputs the outputs read: the last output's block starts at q * down and spans `span`. */
    Py_ssize_t needed = n_out > 0 ? ((first + n_out - 1) / up - first_block) * down + span : 0;
    Py_ssize_t work_len = needed > end ? needed : end;
    /* With down > 1 the inputs are also dealt into `down` streams, input[m * down + r] to
     * streams[r * stream_len + m], so that the inputs of consecutive outputs are adjacent. */
    Py_ssize_t stream_len = (work_len + down - 1) / down;
    Py_ssize_t split_len = down > 1 ? down * stream_len : 0;
    size_t doubles = (size_t)(work_len + split_len + span);
    work = PyMem_Malloc(doubles * sizeof(double) + (size_t)span * sizeof(Py_ssize_t));
    if (work == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    double *input = work;
    double *streams = down > 1 ? work + work_len : input;
    double *tap_values = work + work_len + split_len;
    Py_ssize_t *tap_offsets = (Py_ssize_t *)(tap_values + span);

    memcpy(input, history.buf, (size_t)held * sizeof(double));
    const char *chunk_bytes = chunk.buf;
    Py_ssize_t chunk_stride = chunk.strides != NULL ? chunk.strides[0] : (Py_ssize_t)sizeof(short);
    if (chunk_stride == (Py_ssize_t)sizeof(short)) {
        const short *samples = (const short *)chunk_bytes;
        for (Py_ssize_t i = 0; i < count; i++) {
            input[held + i] = (double)samples[i];
        }
    }
    else {
        for (Py_ssize_t i = 0; i < count; i++) {
            input[held + i] = (double)*(const short *)(chunk_bytes + i * chunk_stride);
        }
    }
    for (Py_ssize_t i = end; i < work_len; i++) {
        input[i] = 0.0;
    }
    if (down > 1) {
        for (Py_ssize_t r = 0; r < down; r++) {
            double *stream = streams + r * stream_len;
            for (Py_ssize_t m = 0; m < stream_len; m++) {
                Py_ssize_t k = m * down + r;
                stream[m] = k < work_len ? input[k] : 0.0;
            }
        }
    }

    const double *coefficients = taps.buf;
    short *output = out.buf;
    for (Py_ssize_t phase = 0; phase < up; phase++) {
        /* Outputs of this phase: k = base + q * up for q in [q_lo, q_hi), within [first, first + n_out). */
        Py_ssize_t base = first_block * up + phase;
        Py_ssize_t q_lo = base >= first ? 0 : 1;
        Py_ssize_t limit = first + n_out - base;
        Py_ssize_t q_hi = limit > 0 ? (limit + up - 1) / up : 0;
        Py_ssize_t n = q_hi - q_lo;
        if (n <= 0) {
            continue;
        }
        const double *phase_taps = coefficients + phase * span;
        Py_ssize_t nonzero = 0;
        for (Py_ssize_t pos = 0; pos < span; pos++) {
            /* A half-band filter has many zero taps; leaving them out changes no exact sum. */
            if (phase_taps[pos] != 0.0) {
                tap_offsets[nonzero] = (pos % down) * stream_len + pos / down + q_lo;
                tap_values[nonzero] = phase_taps[pos];
                nonzero++;
            }
        }
        phase_outputs(streams, tap_offsets, tap_values, nonzero, output + (base + q_lo * up - first), up, n);
    }
    memmove(history.buf, input + keep_start, (size_t)(end - keep_start) * sizeof(double));
    result = Py_NewRef(Py_None);

done:
    PyMem_Free(work);
    PyBuffer_Release(&out);
    PyBuffer_Release(&history);
    PyBuffer_Release(&chunk);
    PyBuffer_Release(&taps);
    return result;
}

/* ---- base64 for media payloads -------------------------------------------------------------------
 *
 * binascii is the reference: every media message's payload goes through one of these, and binascii's
 * byte-at-a-time loops cost 3-5 ns a character, about as much as the resampler for a 100 ms chunk.
 * The decoder takes only the canonical form (a multiple of 4 characters of the standard alphabet, at
 * most two '=' at the very end) and returns None for anything else, which the caller then gives to
 * binascii, so that every error is worded the usual way. */

static const char BASE64_ALPHABET[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/* Each character's 6 bits, pre-shifted to its place in a group of 4, or INVALID_SEXTET outside the
 * alphabet ('=' included); filled when the module loads. */
#define INVALID_SEXTET 0x80000000u
static uint32_t sextet_at[4][256];

/* The two characters of each 12-bit value, for encoding three bytes with two lookups. */
static char pair_of[4096][2];

static void
fill_base64_tables(void)
{
    for (int value = 0; value < 4096; value++) {
        pair_of[value][0] = BASE64_ALPHABET[value >> 6];
        pair_of[value][1] = BASE64_ALPHABET[value & 63];
    }
    for (int place = 0; place < 4; place++) {
        for (int c = 0; c < 256; c++) {
            sextet_at[place][c] = INVALID_SEXTET;
        }
        for (uint32_t value = 0; value < 64; value++) {
            sextet_at[place][(unsigned char)BASE64_ALPHABET[value]] = value << (18 - 6 * place);
        }
    }
}

static ALWAYS_INLINE uint32_t
group_bits(const unsigned char *group)
{
    return sextet_at[0][group[0]] | sextet_at[1][group[1]] | sextet_at[2][group[2]] | sextet_at[3][group[3]];
}

/* b64decode_canonical(text: str) -> bytes | None */
static PyObject *
b64decode_canonical(PyObject *module, PyObject *text)
{
    (void)module;
    if (!PyUnicode_Check(text)) {
        PyErr_Format(PyExc_TypeError, "text must be a str, got %s", Py_TYPE(text)->tp_name);
        return NULL;
    }
#if PY_VERSION_HEX < 0x030C0000
    if (PyUnicode_READY(text) != 0) { /* a no-op, deprecated, from 3.12 on */
        return NULL;
    }
#endif
    if (!PyUnicode_IS_ASCII(text)) {
        Py_RETURN_NONE;
    }
    Py_ssize_t length = PyUnicode_GET_LENGTH(text);
    const unsigned char *chars = PyUnicode_1BYTE_DATA(text);
    if (length % 4 != 0) {
        Py_RETURN_NONE;
    }
    Py_ssize_t padding = 0;
    if (length > 0 && chars[length - 1] == '=') {
        padding = chars[length - 2] == '=' ? 2 : 1;
    }
    Py_ssize_t whole = padding ? length - 4 : length; /* characters in groups without padding */
    PyObject *result = PyBytes_FromStringAndSize(NULL, length / 4 * 3 - padding);
    if (result == NULL) {
        return NULL;
    }
    unsigned char *out = (unsigned char *)PyBytes_AS_STRING(result);
    for (Py_ssize_t i = 0; i < whole; i += 4) {
        uint32_t bits = group_bits(chars + i);
        if (bits & INVALID_SEXTET) {
            goto not_canonical;
        }
        out[0] = (unsigned char)(bits >> 16);
        out[1] = (unsigned char)(bits >> 8);
        out[2] = (unsigned char)bits;
        out += 3;
    }
    if (padding) {
        const unsigned char *last = chars + whole;
        uint32_t bits = sextet_at[0][last[0]] | sextet_at[1][last[1]];
        if (padding == 1) {
            bits |= sextet_at[2][last[2]];
        }
        if (bits & INVALID_SEXTET) {
            goto not_canonical;
        }
        out[0] = (unsigned char)(bits >> 16);
        if (padding == 1) {
            out[1] = (unsigned char)(bits >> 8);
        }
    }
    return result;

not_canonical:
    Py_DECREF(result);
    Py_RETURN_NONE;
}

/* b64encode_ascii(data: bytes-like) -> str: binascii.b2a_base64(data, newline=False).decode("ascii") */
static PyObject *
b64encode_ascii(PyObject *module, PyObject *data)
{
    (void)module;
    Py_buffer view;
    if (PyObject_GetBuffer(data, &view, PyBUF_C_CONTIGUOUS) != 0) {
        return NULL;
    }
    const unsigned char *in = view.buf;
    Py_ssize_t size = view.len;
    if (size > (PY_SSIZE_T_MAX - 2) / 4 * 3) {
        PyBuffer_Release(&view);
        return PyErr_NoMemory();
    }
    PyObject *result = PyUnicode_New((size + 2) / 3 * 4, 127);
    if (result == NULL) {
        PyBuffer_Release(&view);
        return NULL;
    }
    unsigned char *out = PyUnicode_1BYTE_DATA(result);
    Py_ssize_t i = 0;
    for (; i + 3 <= size; i += 3) {
        uint32_t bits = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 | in[i + 2];
        memcpy(out, pair_of[bits >> 12], 2);
        memcpy(out + 2, pair_of[bits & 4095], 2);
        out += 4;
    }
    if (i < size) {
        uint32_t bits = (uint32_t)in[i] << 16 | (i + 1 < size ? (uint32_t)in[i + 1] << 8 : 0);
        out[0] = (unsigned char)BASE64_ALPHABET[bits >> 18];
        out[1] = (unsigned char)BASE64_ALPHABET[(bits >> 12) & 63];
        out[2] = i + 1 < size ? (unsigned char)BASE64_ALPHABET[(bits >> 6) & 63] : '=';
        out[3] = '=';
    }
    PyBuffer_Release(&view);
    return result;
}

static PyMethodDef dsp_methods[] = {
    {"b64decode_canonical", b64decode_canonical, METH_O,
     "b64decode_canonical(text, /)\n--\n\n"
     "binascii.a2b_base64(text, strict_mode=True) for canonical base64; None for any other text."},
    {"b64encode_ascii", b64encode_ascii, METH_O,
     "b64encode_ascii(data, /)\n--\n\n"
     "binascii.b2a_base64(data, newline=False).decode('ascii')."},
    {"polyphase_step", (PyCFunction)(void (*)(void))polyphase_step, METH_FASTCALL,
     "polyphase_step(out, history, chunk, taps, held, up, down, first, keep_start)\n--\n\n"
     "One streaming polyphase resampler step (see voicebot.audio.Resampler)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef dsp_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "voicebot._dsp",
    .m_doc = "Compiled kernels for the media hot path: the resampler's step (voicebot.audio; its numpy "
             "code is the reference) and base64 (voicebot.protocol; binascii is the reference).",
    .m_size = 0,
    .m_methods = dsp_methods,
};

PyMODINIT_FUNC
PyInit__dsp(void)
{
    fill_base64_tables();
    return PyModuleDef_Init(&dsp_module);
}
