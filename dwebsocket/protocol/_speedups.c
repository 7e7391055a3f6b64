/*
 * Optional C accelerator for dwebsocket.protocol (frames.py and connection.py hold the
 * pure-Python versions, which the test suite runs against the same tests, byte for byte):
 *
 *   apply_mask(data, key) -> bytes      XOR masking (RFC 6455 5.3); data: any bytes-like
 *   unmask(buf, start, end) -> bytes    buf[start:end] XOR the key at buf[start-4:start]
 *   frame_header(b0, length, masked) -> bytes
 *       the header of a frame (RFC 6455 5.2): the one encoder, also used by _fastpath.c
 *   scan_messages(buf, pos, masked, max_length, out) -> int
 *       the receive loop's fast path: appends the messages of the whole, unfragmented,
 *       uncompressed data frames from buf[pos:] to the list out; returns where it stopped
 *   ReceiveState                        the core's state that the backends' C fast path
 *                                       reads (Connection.rx; a struct, read without
 *                                       running Python)
 *
 * scan_frames(), encode_header(), make_message(), xor_mask() and ReceiveState are also
 * exported to other extensions (_speedups.h).
 *
 * What may run Python code here. Python code (a finalizer, a gc callback, a greenlet
 * switch) can run only where an object is deallocated, or where an allocation starts a
 * garbage collection, which only an allocation of a GC-tracked object can do. This file
 * allocates bytes and str (not GC-tracked), grows the caller's list (PyMem) and creates
 * no exception on the way through scan_frames(): invalid UTF-8 is found by
 * utf8_valid(), without raising. It decrefs only the objects it just made. So
 * scan_frames() runs no Python code, and a caller may scan a buffer of its own that
 * Python code also uses (_fastpath.c does, and re-checks its own state after anything
 * that may run Python). The functions called from Python (apply_mask, unmask, ...)
 * allocate their results and may raise; they hold no shared state across that.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>
#include <structmember.h>

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

/* A buffer's bytes in C order: its own memory when it is C-contiguous, else a copy in
   *owned (PyMem; free it after). bytes(data) is what the Python version reads. */
static int
buffer_bytes(PyObject *obj, Py_buffer *view, const uint8_t **data, uint8_t **owned)
{
    *owned = NULL;
    if (PyObject_GetBuffer(obj, view, PyBUF_FULL_RO) < 0) {
        return -1;
    }
    if (PyBuffer_IsContiguous(view, 'C')) {
        *data = (const uint8_t *)view->buf;
        return 0;
    }
    *owned = PyMem_Malloc(view->len > 0 ? (size_t)view->len : 1);
    if (*owned == NULL) {
        PyBuffer_Release(view);
        PyErr_NoMemory();
        return -1;
    }
    if (PyBuffer_ToContiguous(*owned, view, view->len, 'C') < 0) {
        PyMem_Free(*owned);
        PyBuffer_Release(view);
        return -1;
    }
    *data = *owned;
    return 0;
}

static PyObject *
apply_mask(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    Py_buffer data, key;
    const uint8_t *data_bytes, *key_bytes;
    uint8_t *data_owned, *key_owned;
    PyObject *result = NULL;

    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "apply_mask() takes exactly 2 arguments (data, key)");
        return NULL;
    }
    if (buffer_bytes(args[0], &data, &data_bytes, &data_owned) < 0) {
        return NULL;
    }
    if (buffer_bytes(args[1], &key, &key_bytes, &key_owned) < 0) {
        PyMem_Free(data_owned);
        PyBuffer_Release(&data);
        return NULL;
    }
    if (key.len != 4) {
        PyErr_SetString(PyExc_ValueError, "mask key must be 4 bytes long");
        goto done;
    }
    result = PyBytes_FromStringAndSize(NULL, data.len);
    if (result != NULL) {
        xor_mask(data_bytes, (uint8_t *)PyBytes_AS_STRING(result), data.len, key_bytes);
    }
done:
    PyMem_Free(key_owned);
    PyBuffer_Release(&key);
    PyMem_Free(data_owned);
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
 * Strict UTF-8 (RFC 3629, as str.decode("utf-8") reads it): no overlong forms, no
 * surrogates, nothing past U+10FFFF. 0: invalid; 1: ASCII only; 2: valid, not ASCII.
 * Checked here rather than by catching the decoder's UnicodeDecodeError, whose
 * allocation could start a garbage collection (see the top of this file).
 */
static int
utf8_valid(const uint8_t *s, Py_ssize_t n)
{
    Py_ssize_t i = 0;
    int ascii = 1;

    while (i < n) {
        uint8_t c, c1;
        for (; i + 8 <= n; i += 8) {
            uint64_t v;
            memcpy(&v, s + i, 8);
            if (v & 0x8080808080808080ULL) {
                break;
            }
        }
        if (i >= n) {
            break;
        }
        c = s[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        ascii = 0;
        if (c < 0xC2) {
            return 0; /* a continuation byte, or an overlong 2-byte form */
        }
        if (c < 0xE0) {
            if (n - i < 2 || (s[i + 1] & 0xC0) != 0x80) {
                return 0;
            }
            i += 2;
            continue;
        }
        if (c < 0xF0) {
            if (n - i < 3) {
                return 0;
            }
            c1 = s[i + 1];
            if ((c1 & 0xC0) != 0x80 || (s[i + 2] & 0xC0) != 0x80 ||
                (c == 0xE0 && c1 < 0xA0) || (c == 0xED && c1 >= 0xA0)) {
                return 0; /* overlong, or a surrogate (U+D800-U+DFFF) */
            }
            i += 3;
            continue;
        }
        if (c < 0xF5) {
            if (n - i < 4) {
                return 0;
            }
            c1 = s[i + 1];
            if ((c1 & 0xC0) != 0x80 || (s[i + 2] & 0xC0) != 0x80 ||
                (s[i + 3] & 0xC0) != 0x80 || (c == 0xF0 && c1 < 0x90) ||
                (c == 0xF4 && c1 >= 0x90)) {
                return 0; /* overlong, or past U+10FFFF */
            }
            i += 4;
            continue;
        }
        return 0;
    }
    return ascii ? 1 : 2;
}

/*
 * make_message(text, data, n, &message): a message's str (text: strict UTF-8) or bytes
 * from its payload. 1, *message set; 0: not UTF-8 (nothing made, nothing raised); -1:
 * out of memory. Runs no Python code (see the top of this file). Also exported: the
 * fast path makes its inflated messages with it.
 */
static int
make_message(int text, const uint8_t *data, Py_ssize_t n, PyObject **message)
{
    if (!text) {
        *message = PyBytes_FromStringAndSize((const char *)data, n);
        return *message == NULL ? -1 : 1;
    }
    switch (utf8_valid(data, n)) {
    case 1: /* ASCII: its bytes are the str's */
        *message = PyUnicode_New(n, 127);
        if (*message != NULL) {
            memcpy(PyUnicode_DATA(*message), data, (size_t)n);
        }
        break;
    case 2:
        *message = PyUnicode_DecodeUTF8((const char *)data, n, "strict");
        break;
    default:
        *message = NULL;
        return 0;
    }
    return *message == NULL ? -1 : 1;
}

/*
 * scan_frames(base, n, pos, masked, max_length, out) -> offset, or -1 with an exception
 *
 * From base[pos:n], while the next frame is a whole final text or binary frame with no RSV
 * bit, masked iff ``masked``, of at most ``max_length`` bytes of payload: unmask it,
 * decode it (text, strict UTF-8) and append the str or bytes to the list ``out``. Returns
 * the offset of the first frame it did not take (incomplete, anything else, or invalid
 * UTF-8), for connection.py's Python loop to take on from: the same rules, the same
 * results. It runs no Python code (see the top of this file): a caller may scan a buffer
 * of its own that Python code also uses.
 *
 * Exported to other extensions through the capsule (see _speedups.h): the
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
        if (masked && b0 == 0x81) {
            uint8_t *tmp = length <= (Py_ssize_t)sizeof(stack) ? stack : PyMem_Malloc(length);
            int made;
            if (tmp == NULL) {
                PyErr_NoMemory();
                return -1;
            }
            xor_mask(base + start, tmp, length, base + start - 4);
            made = make_message(1, tmp, length, &message);
            if (tmp != stack) {
                PyMem_Free(tmp);
            }
            if (made < 0) {
                return -1; /* out of memory */
            }
            if (made == 0) {
                break; /* the Python loop fails the connection with 1007 */
            }
        }
        else if (b0 == 0x81) {
            int made = make_message(1, base + start, length, &message);
            if (made < 0) {
                return -1;
            }
            if (made == 0) {
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

/*
 * encode_header(out, b0, length, masked) -> the header's length (2, 4 or 10), written to
 * out (at least 10 bytes): RFC 6455 5.2, the first byte b0 (FIN, RSV, opcode), then the
 * payload length in 7, 7+16 or 7+64 bits, the mask bit set if ``masked`` (the caller
 * appends the key). length must be >= 0. The one frame-header encoder: frames.py uses it
 * through frame_header(), _fastpath.c through the capsule.
 */
static Py_ssize_t
encode_header(uint8_t *out, uint8_t b0, Py_ssize_t length, int masked)
{
    uint8_t mask_bit = masked ? 0x80 : 0;
    int i;

    out[0] = b0;
    if (length < 126) {
        out[1] = mask_bit | (uint8_t)length;
        return 2;
    }
    if (length < 65536) {
        out[1] = mask_bit | 126;
        out[2] = (uint8_t)(length >> 8);
        out[3] = (uint8_t)length;
        return 4;
    }
    out[1] = mask_bit | 127;
    for (i = 0; i < 8; i++) {
        out[2 + i] = (uint8_t)((uint64_t)length >> (56 - 8 * i));
    }
    return 10;
}

/* frame_header(b0, length, masked) -> bytes: encode_header() for Python. */
static PyObject *
frame_header(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    long b0;
    Py_ssize_t length;
    int masked;
    uint8_t out[10];

    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError,
                        "frame_header() takes exactly 3 arguments (b0, length, masked)");
        return NULL;
    }
    b0 = PyLong_AsLong(args[0]);
    if (b0 == -1 && PyErr_Occurred()) {
        return NULL;
    }
    length = PyLong_AsSsize_t(args[1]);
    if (length == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if ((masked = PyObject_IsTrue(args[2])) < 0) {
        return NULL;
    }
    if (b0 < 0 || b0 > 255 || length < 0) {
        PyErr_SetString(PyExc_ValueError, "frame_header(): need 0 <= b0 <= 255 and length >= 0");
        return NULL;
    }
    return PyBytes_FromStringAndSize((const char *)out,
                                     encode_header(out, (uint8_t)b0, length, masked));
}

/* -- ReceiveState ------------------------------------------------------------------- */

static PyMemberDef ReceiveState_members[] = {
    {"open", T_BOOL, offsetof(DwsReceiveState, open), 0,
     "True while the connection is OPEN (no close frame sent or received)."},
    {"max_message", T_PYSSIZET, offsetof(DwsReceiveState, max_message), 0,
     "The message limit after decompression, in bytes (sys.maxsize: none)."},
    {"scan_limit", T_PYSSIZET, offsetof(DwsReceiveState, scan_limit), 0,
     "The largest payload a fast path may take itself from the next bytes received, at a "
     "frame boundary, compressed or not (compressed: on the wire); -1 when it may take "
     "nothing (a frame or a fragmented message is in progress, or the connection is "
     "done)."},
    {NULL},
};

static PyObject *
ReceiveState_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"open", "scan_limit", "max_message", NULL};
    int open = 1;
    Py_ssize_t scan_limit = -1, max_message = PY_SSIZE_T_MAX;
    DwsReceiveState *self;

    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|$pnn:ReceiveState", kwlist, &open,
                                     &scan_limit, &max_message)) {
        return NULL;
    }
    if ((self = (DwsReceiveState *)type->tp_alloc(type, 0)) == NULL) {
        return NULL;
    }
    self->open = (char)open;
    self->scan_limit = scan_limit;
    self->max_message = max_message;
    return (PyObject *)self;
}

static PyObject *
ReceiveState_repr(DwsReceiveState *self)
{
    return PyUnicode_FromFormat("ReceiveState(open=%s, scan_limit=%zd, max_message=%zd)",
                                self->open ? "True" : "False", self->scan_limit,
                                self->max_message);
}

static PyTypeObject ReceiveState_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "dwebsocket.protocol._speedups.ReceiveState",
    .tp_doc = "ReceiveState(*, open=True, scan_limit=-1, max_message=sys.maxsize): what Connection keeps current for "
              "a fast path to read (connection.ReceiveState in C).",
    .tp_basicsize = sizeof(DwsReceiveState),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = ReceiveState_new,
    .tp_repr = (reprfunc)ReceiveState_repr,
    .tp_members = ReceiveState_members,
};

static DwsSpeedupsCAPI speedups_capi = {scan_frames, encode_header, make_message, NULL,
                                        xor_mask};

static int
speedups_exec(PyObject *module)
{
    PyObject *capsule;

    if (PyType_Ready(&ReceiveState_Type) < 0 ||
        PyModule_AddObjectRef(module, "ReceiveState", (PyObject *)&ReceiveState_Type) < 0) {
        return -1;
    }
    speedups_capi.receive_state_type = &ReceiveState_Type;
    capsule = PyCapsule_New((void *)&speedups_capi, DWS_SPEEDUPS_CAPSULE, NULL);
    if (capsule == NULL) {
        return -1;
    }
    if (PyModule_AddObject(module, DWS_SPEEDUPS_CAPSULE_ATTR, capsule) < 0) {
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
    {"frame_header", (PyCFunction)(void (*)(void))frame_header, METH_FASTCALL,
     "frame_header(b0, length, masked) -> bytes: a frame's header (RFC 6455 5.2)."},
    {"scan_messages", (PyCFunction)(void (*)(void))scan_messages, METH_FASTCALL,
     "scan_messages(buf, pos, masked, max_length, out) -> int: append the messages of the "
     "whole simple data frames from buf[pos:] to out; return where it stopped."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef_Slot speedups_slots[] = {
    {Py_mod_exec, speedups_exec},
#if PY_VERSION_HEX >= 0x030C0000
    /* Not an interpreter with its own GIL: ReceiveState is a static type, and
       speedups_capi (a global) points at it. Legacy subinterpreters share the GIL. */
    {Py_mod_multiple_interpreters, Py_MOD_MULTIPLE_INTERPRETERS_SUPPORTED},
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
