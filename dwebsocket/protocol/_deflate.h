/*
 * The C API of dwebsocket.protocol._deflate, for the default backend's fast path:
 *
 *     const DwsDeflateCAPI *z = PyCapsule_Import(DWS_DEFLATE_CAPSULE, 0);
 *     if (Py_IS_TYPE(obj, z->deflater_type)) n = z->compress_message(obj, data, len, &out);
 *     if (Py_IS_TYPE(obj, z->inflater_type)) rc = z->inflate_message(obj, ...);
 *
 * compress_message() is PerMessageDeflate.compress() (deflate.py) on a Deflater, and
 * inflate_message() its decompress() of one whole message on an Inflater, in the common
 * case: see _deflate.c. Neither runs Python code. Bump the capsule's version when
 * anything here changes (both extensions are built from one checkout).
 */
#ifndef DWS_DEFLATE_H
#define DWS_DEFLATE_H

#include <Python.h>
#include <stdint.h>

#define DWS_DEFLATE_CAPSULE_ATTR "_C_API_2"
#define DWS_DEFLATE_CAPSULE "dwebsocket.protocol._deflate._C_API_2"

typedef struct {
    PyTypeObject *deflater_type;
    PyTypeObject *inflater_type;
    /* One whole message compressed, the 00 00 ff ff tail stripped (RFC 7692 7.2.1), the
       context dropped after it under no context takeover. *out points into _deflate's
       output buffer (one per process, guarded by the GIL), valid until the next call from
       any thread: write or copy it before anything may release the GIL. The length, or -1
       with MemoryError (or a zlib error) set. */
    Py_ssize_t (*compress_message)(PyObject *deflater, const uint8_t *data, Py_ssize_t n,
                                   const uint8_t **out);
    /* One whole message (one final frame's payload) decompressed, at most max_size bytes
       (RFC 7692 7.2.2). 1: done, *out (that buffer) and *out_len set; 0: not taken
       the common way (corrupt data, over max_size, the peer ended the stream): the outcome
       is kept in the Inflater, whose next decompress() call from Python, with the same
       payload, returns or raises it, so that deflate.py's rules decide; -1: MemoryError. */
    int (*inflate_message)(PyObject *inflater, const uint8_t *payload, Py_ssize_t n,
                           Py_ssize_t max_size, const uint8_t **out, Py_ssize_t *out_len);
    /* After inflate_message() returned 1 for a text message that is not UTF-8: keep the
       outcome (payload and output) for Python, as inflate_message() does on 0. 0 or -1. */
    int (*keep_outcome)(PyObject *inflater, const uint8_t *payload, Py_ssize_t n,
                        const uint8_t *output, Py_ssize_t out_len);
} DwsDeflateCAPI;

#endif
