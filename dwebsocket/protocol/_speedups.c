/*
 * Optional C accelerator for dwebsocket.protocol: XOR masking (RFC 6455 5.3).
 *
 *   apply_mask(data, key) -> bytes      data: any bytes-like object, key: 4 bytes
 *   unmask(buf, start, end) -> bytes    buf[start:end] XOR the key at buf[start-4:start]
 *   scan_messages(buf, pos, masked, max_length, out) -> int
 *       the receive loop's fast path: appends the messages of the whole, unfragmented,
 *       uncompressed data frames from buf[pos:] to the list out; returns where it stopped
 *
 * scan_frames() is also exported to other extensions (_speedups.h).
 *
 * unmask() lets the receive loop unmask a payload straight out of its buffer, without
 * slicing out the payload and the key first. frames.py holds the pure-Python versions,
 * which the test suite runs against the same tests.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#include "_speedups.h"

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

/*
 * scan_frames(base, n, pos, masked, max_length, out) -> offset, or -1 with an exception
 *
 * From base[pos:n], while the next frame is a whole final text or binary frame with no RSV
 * bit, masked iff ``masked``, of at most ``max_length`` bytes of payload: unmask it,
 * decode it (text, strict UTF-8) and append the str or bytes to the list ``out``. Returns
 * the offset of the first frame it did not take (incomplete, anything else, or invalid
 * UTF-8), for connection.py's Python loop to take on from: the same rules, the same
 * results. It allocates only str, bytes and the list's array, none of which can start a
 * garbage collection (only the exception of invalid UTF-8 could), so it runs no Python
 * code: a caller may scan a buffer of its own that Python code also uses.
 *
 * Exported to other extensions through the capsule ``_C_API`` (see _speedups.h): the
 * default backend's fast path scans its read buffer without making a bytes object of it.
 */
static Py_ssize_t
scan_frames(const uint8_t *base, Py_ssize_t n, Py_ssize_t pos, int masked,
            Py_ssize_t max_length, PyObject *out)
{
    uint8_t stack[128];

    while (n - pos >= 2) {
        uint8_t b0 = base[pos], b1 = base[pos + 1];
        Py_ssize_t start, length = b1 & 0x7F, end;
        PyObject *message;

        if ((b0 != 0x81 && b0 != 0x82) || ((b1 & 0x80) != 0) != (masked != 0)) {
            break;
        }
        if (length < 126) {
            start = pos + 2;
        }
        else if (length == 126) {
            if (n - pos < 4) {
                break;
            }
            length = ((Py_ssize_t)base[pos + 2] << 8) | base[pos + 3];
            start = pos + 4;
        }
        else {
            uint64_t big = 0;
            int i;
            if (n - pos < 10) {
                break;
            }
            for (i = 0; i < 8; i++) {
                big = (big << 8) | base[pos + 2 + i];
            }
            if (big > (uint64_t)PY_SSIZE_T_MAX) {
                break;
            }
            length = (Py_ssize_t)big;
            start = pos + 10;
        }
        if (masked) {
            start += 4;
        }
        if (length > max_length || start > n || length > n - start) {
            break;
        }
        end = start + length;
        if (b0 == 0x81) {
            const char *text = (const char *)base + start;
            uint8_t *tmp = NULL;
            if (masked) {
                tmp = length <= (Py_ssize_t)sizeof(stack) ? stack : PyMem_Malloc(length);
                if (tmp == NULL) {
                    PyErr_NoMemory();
                    return -1;
                }
                xor_mask(base + start, tmp, length, base + start - 4);
                text = (const char *)tmp;
            }
            message = PyUnicode_DecodeUTF8(text, length, "strict");
            if (tmp != NULL && tmp != stack) {
                PyMem_Free(tmp);
            }
            if (message == NULL) {
                if (!PyErr_ExceptionMatches(PyExc_UnicodeDecodeError)) {
                    return -1;
                }
                PyErr_Clear(); /* the Python loop fails the connection with 1007 */
                break;
            }
        }
        else {
            message = PyBytes_FromStringAndSize(NULL, length);
            if (message == NULL) {
                return -1;
            }
            if (masked) {
                xor_mask(base + start, (uint8_t *)PyBytes_AS_STRING(message), length,
                         base + start - 4);
            }
            else {
                memcpy(PyBytes_AS_STRING(message), base + start, length);
            }
        }
        if (PyList_Append(out, message) < 0) {
            Py_DECREF(message);
            return -1;
        }
        Py_DECREF(message);
        pos = end;
    }
    return pos;
}

/* scan_messages(buf, pos, masked, max_length, out) -> int: scan_frames() on a buffer. */
static PyObject *
scan_messages(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    Py_buffer buf;
    Py_ssize_t pos, max_length;
    int masked;
    PyObject *out;

    if (nargs != 5) {
        PyErr_SetString(PyExc_TypeError,
                        "scan_messages() takes exactly 5 arguments (buf, pos, masked, max_length, out)");
        return NULL;
    }
    pos = PyLong_AsSsize_t(args[1]);
    if (pos == -1 && PyErr_Occurred()) {
        return NULL;
    }
    masked = PyObject_IsTrue(args[2]);
    if (masked < 0) {
        return NULL;
    }
    max_length = PyLong_AsSsize_t(args[3]);
    if (max_length == -1 && PyErr_Occurred()) {
        return NULL;
    }
    out = args[4];
    if (!PyList_Check(out)) {
        PyErr_SetString(PyExc_TypeError, "scan_messages(): out must be a list");
        return NULL;
    }
    if (PyObject_GetBuffer(args[0], &buf, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    if (pos < 0) {
        pos = buf.len;
    }
    pos = scan_frames((const uint8_t *)buf.buf, buf.len, pos, masked, max_length, out);
    PyBuffer_Release(&buf);
    return pos < 0 ? NULL : PyLong_FromSsize_t(pos);
}

static const DwsSpeedupsCAPI speedups_capi = {scan_frames};

static int
speedups_exec(PyObject *module)
{
    PyObject *capsule = PyCapsule_New((void *)&speedups_capi, DWS_SPEEDUPS_CAPSULE, NULL);
    if (capsule == NULL) {
        return -1;
    }
    if (PyModule_AddObject(module, "_C_API", capsule) < 0) {
        Py_DECREF(capsule);
        return -1;
    }
    return 0;
}

static PyMethodDef speedups_methods[] = {
    {"apply_mask", (PyCFunction)(void (*)(void))apply_mask, METH_FASTCALL,
     "apply_mask(data, key) -> bytes: XOR data with the 4-byte key repeated."},
    {"unmask", (PyCFunction)(void (*)(void))unmask, METH_FASTCALL,
     "unmask(buf, start, end) -> bytes: buf[start:end] XOR the key at buf[start-4:start]."},
    {"scan_messages", (PyCFunction)(void (*)(void))scan_messages, METH_FASTCALL,
     "scan_messages(buf, pos, masked, max_length, out) -> int: append the messages of the "
     "whole simple data frames from buf[pos:] to out; return where it stopped."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef_Slot speedups_slots[] = {
    {Py_mod_exec, speedups_exec},
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
