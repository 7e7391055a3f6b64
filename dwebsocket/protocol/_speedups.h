/*
 * The C API of dwebsocket.protocol._speedups, for other extensions of dwebsocket:
 *
 *     const DwsSpeedupsCAPI *api = PyCapsule_Import(DWS_SPEEDUPS_CAPSULE, 0);
 *     pos = api->scan_frames(base, n, pos, masked, max_length, out);
 *     hlen = api->encode_header(out, b0, length, masked);
 *     made = api->make_message(text, data, n, &message);
 *     api->xor_mask(in, out, n, key);
 *     if (Py_IS_TYPE(obj, api->receive_state_type)) ((DwsReceiveState *)obj)->open ...
 *
 * scan_frames() is scan_messages() on a plain buffer, encode_header() the one frame-header
 * encoder, make_message() a payload's str (strict UTF-8) or bytes, xor_mask() the masking (in may
 * be out: in place), ReceiveState what Connection keeps current for a fast path (see
 * _speedups.c). scan_frames(), encode_header(), make_message() and xor_mask() run no
 * Python code. Bump the capsule's version when
 * anything here changes: both extensions are built from one checkout, and an extension
 * built against another version then fails to import instead of misreading memory.
 */
#ifndef DWS_SPEEDUPS_H
#define DWS_SPEEDUPS_H

#include <Python.h>
#include <stdint.h>

#define DWS_SPEEDUPS_CAPSULE_ATTR "_C_API_4"
#define DWS_SPEEDUPS_CAPSULE "dwebsocket.protocol._speedups._C_API_4"

/* connection.ReceiveState: written by the core (Python), read by fast paths (C). */
typedef struct {
    PyObject_HEAD
    char open;             /* the connection is OPEN */
    Py_ssize_t scan_limit; /* largest payload a fast path may take itself; -1: none now */
    Py_ssize_t max_message; /* the message limit after decompression (PY_SSIZE_T_MAX: none) */
} DwsReceiveState;

typedef struct {
    Py_ssize_t (*scan_frames)(const uint8_t *base, Py_ssize_t n, Py_ssize_t pos, int masked,
                              Py_ssize_t max_length, PyObject *out);
    Py_ssize_t (*encode_header)(uint8_t *out, uint8_t b0, Py_ssize_t length, int masked);
    /* 1: *message made; 0: text that is not UTF-8 (nothing raised); -1: MemoryError */
    int (*make_message)(int text, const uint8_t *data, Py_ssize_t n, PyObject **message);
    PyTypeObject *receive_state_type;
    /* out[i] = in[i] ^ key[i % 4] for i < n (RFC 6455 5.3); in == out is allowed */
    void (*xor_mask)(const uint8_t *in, uint8_t *out, Py_ssize_t n, const uint8_t *key);
} DwsSpeedupsCAPI;

#endif
