/*
 * The C API of dwebsocket.protocol._speedups, for other extensions of dwebsocket:
 *
 *     const DwsSpeedupsCAPI *api = PyCapsule_Import(DWS_SPEEDUPS_CAPSULE, 0);
 *     pos = api->scan_frames(base, n, pos, masked, max_length, out);
 *
 * scan_frames() is scan_messages() on a plain buffer (see _speedups.c). Bump the capsule's
 * name when a signature here changes: both extensions are built from one checkout.
 */
#ifndef DWS_SPEEDUPS_H
#define DWS_SPEEDUPS_H

#include <Python.h>
#include <stdint.h>

#define DWS_SPEEDUPS_CAPSULE "dwebsocket.protocol._speedups._C_API"

typedef struct {
    Py_ssize_t (*scan_frames)(const uint8_t *base, Py_ssize_t n, Py_ssize_t pos, int masked,
                              Py_ssize_t max_length, PyObject *out);
} DwsSpeedupsCAPI;

#endif
