/*
 * Optional C accelerator for dwebsocket.protocol: XOR masking (RFC 6455 5.3).
 *
 *   apply_mask(data, key) -> bytes      data: any bytes-like object, key: 4 bytes
 *   unmask(buf, start, end) -> bytes    buf[start:end] XOR the key at buf[start-4:start]
 *
 * unmask() lets the receive loop unmask a payload straight out of its buffer, without
 * slicing out the payload and the key first. frames.py holds the pure-Python versions,
 * which the test suite runs against the same tests.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#if defined(__SSE2__) || defined(_M_X64)
#include <emmintrin.h>
#define DWS_SSE2 1
#endif

static void
xor_mask(const uint8_t *in, uint8_t *out, Py_ssize_t n, const uint8_t *key)
{
    Py_ssize_t i = 0;
    uint32_t k32;
    uint64_t k64;

    memcpy(&k32, key, 4);
    k64 = ((uint64_t)k32 << 32) | k32;

    /* Every block length is a multiple of 4, so key[i & 3] stays in phase. */
#ifdef DWS_SSE2
    if (n >= 16) {
        __m128i k128 = _mm_set1_epi32((int)k32);
        for (; i + 64 <= n; i += 64) {
            __m128i a = _mm_loadu_si128((const __m128i *)(in + i));
            __m128i b = _mm_loadu_si128((const __m128i *)(in + i + 16));
            __m128i c = _mm_loadu_si128((const __m128i *)(in + i + 32));
            __m128i d = _mm_loadu_si128((const __m128i *)(in + i + 48));
            _mm_storeu_si128((__m128i *)(out + i), _mm_xor_si128(a, k128));
            _mm_storeu_si128((__m128i *)(out + i + 16), _mm_xor_si128(b, k128));
            _mm_storeu_si128((__m128i *)(out + i + 32), _mm_xor_si128(c, k128));
            _mm_storeu_si128((__m128i *)(out + i + 48), _mm_xor_si128(d, k128));
        }
        for (; i + 16 <= n; i += 16) {
            __m128i a = _mm_loadu_si128((const __m128i *)(in + i));
            _mm_storeu_si128((__m128i *)(out + i), _mm_xor_si128(a, k128));
        }
    }
#endif
    for (; i + 8 <= n; i += 8) {
        uint64_t v;
        memcpy(&v, in + i, 8);
        v ^= k64;
        memcpy(out + i, &v, 8);
    }
    for (; i < n; i++) {
        out[i] = in[i] ^ key[i & 3];
    }
}

static PyObject *
apply_mask(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    Py_buffer data, key;
    PyObject *result = NULL;

    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "apply_mask() takes exactly 2 arguments (data, key)");
        return NULL;
    }
    if (PyObject_GetBuffer(args[0], &data, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    if (PyObject_GetBuffer(args[1], &key, PyBUF_SIMPLE) < 0) {
        PyBuffer_Release(&data);
        return NULL;
    }
    if (key.len != 4) {
        PyErr_SetString(PyExc_ValueError, "mask key must be 4 bytes long");
        goto done;
    }
    result = PyBytes_FromStringAndSize(NULL, data.len);
    if (result != NULL) {
        xor_mask((const uint8_t *)data.buf, (uint8_t *)PyBytes_AS_STRING(result), data.len,
                 (const uint8_t *)key.buf);
    }
done:
    PyBuffer_Release(&key);
    PyBuffer_Release(&data);
    return result;
}

static PyObject *
unmask(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    Py_buffer buf;
    Py_ssize_t start, end;
    PyObject *result = NULL;

    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "unmask() takes exactly 3 arguments (buf, start, end)");
        return NULL;
    }
    start = PyLong_AsSsize_t(args[1]);
    if (start == -1 && PyErr_Occurred()) {
        return NULL;
    }
    end = PyLong_AsSsize_t(args[2]);
    if (end == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (PyObject_GetBuffer(args[0], &buf, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    if (start < 4 || end < start || end > buf.len) {
        PyErr_SetString(PyExc_ValueError, "unmask(): need 4 <= start <= end <= len(buf)");
        goto done;
    }
    result = PyBytes_FromStringAndSize(NULL, end - start);
    if (result != NULL) {
        const uint8_t *base = (const uint8_t *)buf.buf;
        xor_mask(base + start, (uint8_t *)PyBytes_AS_STRING(result), end - start,
                 base + start - 4);
    }
done:
    PyBuffer_Release(&buf);
    return result;
}

static PyMethodDef speedups_methods[] = {
    {"apply_mask", (PyCFunction)(void (*)(void))apply_mask, METH_FASTCALL,
     "apply_mask(data, key) -> bytes: XOR data with the 4-byte key repeated."},
    {"unmask", (PyCFunction)(void (*)(void))unmask, METH_FASTCALL,
     "unmask(buf, start, end) -> bytes: buf[start:end] XOR the key at buf[start-4:start]."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef_Slot speedups_slots[] = {
#if PY_VERSION_HEX >= 0x030C0000
    {Py_mod_multiple_interpreters, Py_MOD_PER_INTERPRETER_GIL_SUPPORTED},
#endif
#if PY_VERSION_HEX >= 0x030D0000
    {Py_mod_gil, Py_MOD_GIL_NOT_USED},
#endif
    {0, NULL},
};

static struct PyModuleDef speedups_module = {
    PyModuleDef_HEAD_INIT,
    "dwebsocket.protocol._speedups",
    "C accelerator for WebSocket masking (optional; frames.py has the fallback).",
    0,
    speedups_methods,
    speedups_slots,
    NULL,
    NULL,
    NULL,
};

PyMODINIT_FUNC
PyInit__speedups(void)
{
    return PyModuleDef_Init(&speedups_module);
}
