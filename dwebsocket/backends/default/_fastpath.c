/*
 * The default backend's I/O fast path under gevent (optional; the Python code in
 * transport.py and websocket.py does the same, and is what runs without it).
 *
 *   IOState()         the fields of one connection that this file shares with the Python
 *                     code (state.py: FIELDS, and PyIOState, its twin without C)
 *   Waiter(hub, fd)   waits until fd is readable on gevent's loop: the twin of
 *                     transport._GeventReadWaiter (same wait() and close())
 *   FastPath(...)     DefaultWebSocket.wait() and send() in the common case: the socket
 *                     open and idle, this thread's hub, nothing queued, no lock held
 *   Messages(ws)      iter(DefaultWebSocket) without a Python frame per message
 *
 * Why: at one message per wait, the Python between the two system calls (the layers of
 * wait(), the keepalive and database bookkeeping, the lock pairs, the core's entry and
 * send()'s checks) cost more CPU than the system calls themselves. This file does that
 * work for the common case and hands everything else back to the Python methods, which
 * stay the one implementation of the rules: FastPath.wait() returns None and
 * FastPath.send() False whenever it cannot decide alone, and the caller then runs the
 * general path from the start. Each rule it repeats cites its Python original.
 *
 * The contract with the Python side: FastPath reads and writes the connection's state
 * only through two structs, IOState (this file; DefaultWebSocket._io) and the core's
 * ReceiveState (_speedups.h; Connection.rx), type-checked when the FastPath is made, and
 * read as plain memory (IOState.messages, the queue of received messages, is a deque
 * only while the connection has one: it is made when a read completes more than one
 * message and dropped, empty, before a wait, both under the read lock, so that an idle
 * connection keeps no 64-slot deque block; used only when it is an exact deque); and, with permessage-deflate, through PerMessageDeflate's two
 * zlib streams when they are _deflate's own Deflater and Inflater, used only through
 * _deflate's C API (_deflate.h: compress_message(), inflate_message(), which repeat
 * PerMessageDeflate.compress() and decompress() for the common case and run no Python
 * code; what inflate_message() does not take, it keeps for Python's next decompress()
 * of the same frame, so deflate.py's rules decide). The Python it calls is named in STR_NAMES: the read and write
 * locks' acquire/release/locked, the deque's popleft/append, DefaultWebSocket's
 * _received/_lost_received/_send_rest/_write_interrupted/wait/is_closed/_fast, and
 * gevent's loop and watchers
 * (tests/backends/default/test_state.py checks that each exists).
 *
 * What may run Python code, and what may change across it. Everything here holds the
 * GIL and runs in the hub's thread; Python code (another greenlet included, if the code
 * yields) runs during: any call into a Python object (the names above, the loop), the
 * wait (Waiter.wait() switches to the hub), any allocation of a GC-tracked object (a
 * list, an exception: it may start a garbage collection, whose finalizers and gc
 * callbacks are Python code), and any decref of an object Python code may hold. Across
 * such a point anything may change: the session may be shut (IOState.shut), the
 * connection closed (ReceiveState.open), the waiter closed and its fd number reused by
 * another connection (Waiter.closed), its timer fired or its io watcher stopped
 * (Waiter.timer, io_active), frames queued (IOState.queued). So the rule is:
 *
 *   1. do every call that may run Python first; then check the structs and the waiter;
 *      then nothing that may run Python until the system call and the hand-off are done.
 *      What the Python run by a call may read is made true before the call: a watcher
 *      is the Waiter's, and counted as started, before its start() runs (its callback
 *      may run inside that start()), and undone, the watcher stopped, if start() raises
 *      (it may have started it first); a wait whose arming raised is tidied up as one
 *      that ended (waiter_after_wait(): unref'd, freed after a close() meanwhile);
 *   2. the one shared buffer, recv_buf (per thread), is held under a lease: taken right
 *      before read(2), given back once what was read is scanned (scan_read(): neither
 *      scan_frames() nor make_message(), _speedups.c, nor inflate_message(), _deflate.c,
 *      runs Python code) and what remains is copied into a bytes object (not GC-tracked),
 *      before any Python runs; likewise a message compressed by compress_message() lives
 *      in _deflate's output buffer only until it is written or copied; a FastPath that finds the lease taken leaves
 *      the read to the general path. So no Python code can ever see recv_buf in use, and
 *      no connection can be handed another's bytes;
 *   3. a read that begins a large frame (big_frame_at()) reads the frame's rest straight
 *      into its message, a bytes object allocated for it (not GC-tracked: no Python runs)
 *      that no Python code holds until it is handed over; those reads follow the first
 *      without any Python code between (read_big_frame() does not wait), so the checks
 *      made before the first read still hold for them. What they do not complete goes
 *      to the general path as received, before any Python runs;
 *   4. from the read on, what was read exists only here until its messages are queued
 *      and its rest handed to DefaultWebSocket._received(): a failure meanwhile (an
 *      allocation; an exception from Python code that an allocation or the queue ran)
 *      loses it, and the next read would begin in the middle of a frame. So it fails the
 *      connection (lost_read(): DefaultWebSocket._lost_received(), 1011, what the Python
 *      path does in the same place) and returns the exception. lost_read() runs Python:
 *      it comes after the lease ends, and nothing but the return follows it. What
 *      _received() raises, Python has decided on. Likewise a send: once the kernel took
 *      part of a frame (or, compressed, the deflater took the message), its rest must
 *      follow before anything else; a failure before _send_rest() has written it (the
 *      rest's allocation, an exception from _send_rest()) fails the connection
 *      (lost_write(): DefaultWebSocket._write_interrupted(), what _sendall() does).
 *
 * The other statics (the interned names, greenlet.getcurrent, the _speedups C API, the
 * deque type) are set once at import and only read after.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <string.h>
#include <structmember.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "_deflate.h"
#include "_speedups.h"

#define RECV_SIZE 65536 /* transport.RECV_SIZE: the most one read returns */

static const DwsSpeedupsCAPI *speedups;
static const DwsDeflateCAPI *zcodec; /* NULL where _deflate is not built */
static PyObject *getcurrent;     /* greenlet.getcurrent */
static PyTypeObject *deque_type; /* collections.deque */

#define STR_NAMES(X)                                                                        \
    /* the locks (gevent's), the deque of received messages, gevent's loop and watchers */ \
    X(acquire) X(locked) X(release) X(append) X(popleft) X(close) X(loop) X(ref)           \
    X(run_callback) X(run_callback_threadsafe) X(start) X(stop) X(switch) X(timer)         \
    X(update)                                                                               \
    /* DefaultWebSocket */                                                                  \
    X(_fast) X(_lost_received) X(_received) X(_send_rest) X(_write_interrupted) X(is_closed)  \
    X(wait)                                                                                 \
    /* the Waiter's own callbacks */                                                        \
    X(_expired) X(_ready) X(_close_in_hub)
#define DECLARE(name) static PyObject *str_##name;
STR_NAMES(DECLARE)
#undef DECLARE

static double
monotonic(void)
{
    /* time.monotonic()'s clock: not CLOCK_MONOTONIC everywhere (macOS) */
#if PY_VERSION_HEX >= 0x030D0000
    PyTime_t t;
    (void)PyTime_MonotonicRaw(&t);
    return PyTime_AsSecondsDouble(t);
#else
    return _PyTime_AsSecondsDouble(_PyTime_GetMonotonicClock());
#endif
}

/* A float or None (NAN) argument. */
static int
optional_seconds(PyObject *obj, double *out)
{
    if (obj == Py_None) {
        *out = NAN;
        return 0;
    }
    *out = PyFloat_AsDouble(obj);
    return (*out == -1.0 && PyErr_Occurred()) ? -1 : 0;
}

/* Call obj.name(*args) and drop the result; -1 with an exception on failure. */
static int
call_method_void(PyObject *obj, PyObject *name, PyObject *arg)
{
    PyObject *r = arg == NULL ? PyObject_CallMethodNoArgs(obj, name)
                              : PyObject_CallMethodOneArg(obj, name, arg);
    if (r == NULL) {
        return -1;
    }
    Py_DECREF(r);
    return 0;
}

/* A call failed, its exception fetched into (type, value, tb), and the tidying after it
   (which may run Python) returned `tidied`: that exception goes on or, when the tidying
   failed too, the tidying's, with the first as its context, as when an except clause of
   Python's raises. Returns -1. */
static int
raise_after_tidying(int tidied, PyObject *type, PyObject *value, PyObject *tb)
{
    PyObject *type2, *value2, *tb2;

    if (tidied == 0) {
        PyErr_Restore(type, value, tb);
        return -1;
    }
    PyErr_Fetch(&type2, &value2, &tb2);
    PyErr_NormalizeException(&type2, &value2, &tb2);
    PyErr_NormalizeException(&type, &value, &tb);
    if (tb != NULL) {
        (void)PyException_SetTraceback(value, tb);
    }
    PyException_SetContext(value2, value); /* steals value */
    Py_XDECREF(type);
    Py_XDECREF(tb);
    PyErr_Restore(type2, value2, tb2);
    return -1;
}

/* -- IOState -------------------------------------------------------------------------- */

/* state.py's FIELDS, in that order: what DefaultWebSocket and its Transport keep here. */
typedef struct {
    PyObject_HEAD
    char shut;             /* the transport is shut down: nothing more in or out */
    char unfed;            /* received bytes wait in DefaultWebSocket._unfed */
    char ping_outstanding; /* a keepalive ping is unanswered, since ping_sent_at */
    Py_ssize_t queued;     /* bytes waiting in the outbox */
    double last_heard;     /* monotonic time the peer was last heard from */
    double ping_sent_at;
    double db_checked;     /* the last release_idle_connections() */
    /* What the connection carried since the 101 (dwebsocket.metrics adds them up): data
       messages completed and encoded, bytes read and written. Plain increments here: the
       metrics code reads them every few seconds, never per message. */
    long long messages_in, bytes_in, messages_out, bytes_out;
    /* Messages received, not yet taken by the view: a collections.deque, or NULL/None
       while there are none (see the contract above). Read and changed only with the GIL,
       made and dropped only under the read lock. */
    PyObject *messages;
} IOState;

static PyMemberDef IOState_members[] = {
    {"shut", T_BOOL, offsetof(IOState, shut), 0, NULL},
    {"unfed", T_BOOL, offsetof(IOState, unfed), 0, NULL},
    {"ping_outstanding", T_BOOL, offsetof(IOState, ping_outstanding), 0, NULL},
    {"queued", T_PYSSIZET, offsetof(IOState, queued), 0, NULL},
    {"last_heard", T_DOUBLE, offsetof(IOState, last_heard), 0, NULL},
    {"ping_sent_at", T_DOUBLE, offsetof(IOState, ping_sent_at), 0, NULL},
    {"db_checked", T_DOUBLE, offsetof(IOState, db_checked), 0, NULL},
    {"messages_in", T_LONGLONG, offsetof(IOState, messages_in), 0, NULL},
    {"bytes_in", T_LONGLONG, offsetof(IOState, bytes_in), 0, NULL},
    {"messages_out", T_LONGLONG, offsetof(IOState, messages_out), 0, NULL},
    {"bytes_out", T_LONGLONG, offsetof(IOState, bytes_out), 0, NULL},
    {"messages", T_OBJECT, offsetof(IOState, messages), 0, NULL},
    {NULL},
};

static PyObject *
IOState_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    IOState *self;
    if (PyTuple_GET_SIZE(args) != 0 || (kwds != NULL && PyDict_GET_SIZE(kwds) != 0)) {
        PyErr_SetString(PyExc_TypeError, "IOState() takes no arguments");
        return NULL;
    }
    if ((self = (IOState *)type->tp_alloc(type, 0)) == NULL) {
        return NULL;
    }
    self->ping_sent_at = NAN; /* as state.PyIOState() */
    self->db_checked = -1.0;
    return (PyObject *)self;
}

static int
IOState_traverse(IOState *self, visitproc visit, void *arg)
{
    Py_VISIT(self->messages);
    return 0;
}

static int
IOState_clear(IOState *self)
{
    Py_CLEAR(self->messages);
    return 0;
}

static void
IOState_dealloc(IOState *self)
{
    PyObject_GC_UnTrack(self);
    IOState_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* The queue of received messages, borrowed: NULL while there is none. */
static PyObject *
queue_of(IOState *io)
{
    return io->messages == Py_None ? NULL : io->messages;
}

static PyObject *
IOState_repr(IOState *self)
{
    PyObject *heard = PyFloat_FromDouble(self->last_heard);
    PyObject *sent = PyFloat_FromDouble(self->ping_sent_at);
    PyObject *checked = PyFloat_FromDouble(self->db_checked);
    PyObject *r = NULL;
    if (heard != NULL && sent != NULL && checked != NULL) {
        r = PyUnicode_FromFormat(
            "IOState(shut=%s, unfed=%s, ping_outstanding=%s, queued=%zd, last_heard=%R, "
            "ping_sent_at=%R, db_checked=%R, messages_in=%lld, bytes_in=%lld, "
            "messages_out=%lld, bytes_out=%lld, messages=%R)",
            self->shut ? "True" : "False", self->unfed ? "True" : "False",
            self->ping_outstanding ? "True" : "False", self->queued, heard, sent, checked,
            self->messages_in, self->bytes_in, self->messages_out, self->bytes_out,
            self->messages == NULL ? Py_None : self->messages);
    }
    Py_XDECREF(heard);
    Py_XDECREF(sent);
    Py_XDECREF(checked);
    return r;
}

static PyTypeObject IOState_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "dwebsocket.backends.default._fastpath.IOState",
    .tp_doc = "IOState(): what DefaultWebSocket and its Transport share with the fast path "
              "(state.PyIOState in C).",
    .tp_basicsize = sizeof(IOState),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = IOState_new,
    .tp_traverse = (traverseproc)IOState_traverse,
    .tp_clear = (inquiry)IOState_clear,
    .tp_dealloc = (destructor)IOState_dealloc,
    .tp_repr = (reprfunc)IOState_repr,
    .tp_members = IOState_members,
};

/* -- Waiter --------------------------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    PyObject *hub;
    PyObject *hub_switch; /* hub.switch */
    PyObject *loop;       /* hub.loop */
    PyObject *io;         /* loop.io(fd, 1), for the socket's whole life */
    PyObject *timer;      /* the armed timer, or NULL */
    PyObject *last;       /* the greenlet of the last wait() ... */
    PyObject *last_switch; /* ... and its switch method */
    double timer_at;      /* the deadline the timer was armed for */
    unsigned long thread; /* the hub's thread */
    char waiting;         /* last is in wait(), switched to the hub */
    char arming;          /* a wait() is making its calls before that (refuses another) */
    char io_active;
    char closed;          /* close() was called (in any thread): no wait reads readable */
    char close_scheduled; /* close() from another thread handed the rest to the hub's */
    char torn_down;       /* the timer is stopped and the io watcher closed (or closing) */
    char io_closed;
} Waiter;

static PyTypeObject Waiter_Type;

static PyObject *
Waiter_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"hub", "fd", NULL};
    PyObject *hub;
    int fd;
    Waiter *self;

    if (!PyArg_ParseTupleAndKeywords(args, kwds, "Oi:Waiter", kwlist, &hub, &fd)) {
        return NULL;
    }
    self = (Waiter *)type->tp_alloc(type, 0);
    if (self == NULL) {
        return NULL;
    }
    self->thread = PyThread_get_thread_ident();
    self->hub = Py_NewRef(hub);
    if ((self->hub_switch = PyObject_GetAttr(hub, str_switch)) == NULL ||
        (self->loop = PyObject_GetAttr(hub, str_loop)) == NULL ||
        (self->io = PyObject_CallMethod(self->loop, "io", "iiO", fd, 1, Py_False)) == NULL) {
        Py_DECREF(self);
        return NULL;
    }
    return (PyObject *)self;
}

static int
Waiter_traverse(Waiter *self, visitproc visit, void *arg)
{
    Py_VISIT(self->hub);
    Py_VISIT(self->hub_switch);
    Py_VISIT(self->loop);
    Py_VISIT(self->io);
    Py_VISIT(self->timer);
    Py_VISIT(self->last);
    Py_VISIT(self->last_switch);
    return 0;
}

static int
Waiter_clear(Waiter *self)
{
    Py_CLEAR(self->hub);
    Py_CLEAR(self->hub_switch);
    Py_CLEAR(self->loop);
    Py_CLEAR(self->io);
    Py_CLEAR(self->timer);
    Py_CLEAR(self->last);
    Py_CLEAR(self->last_switch);
    return 0;
}

static void
Waiter_dealloc(Waiter *self)
{
    PyObject_GC_UnTrack(self);
    Waiter_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int
waiter_stop_timer(Waiter *self)
{
    PyObject *timer = self->timer;
    int rc = 0;
    if (timer == NULL) {
        return 0;
    }
    self->timer = NULL;
    if (call_method_void(timer, str_stop, NULL) < 0 ||
        call_method_void(timer, str_close, NULL) < 0) {
        rc = -1;
    }
    Py_DECREF(timer);
    return rc;
}

/* Arm the timer for the monotonic time ``deadline`` (transport._GeventReadWaiter.wait). */
static int
waiter_arm(Waiter *self, double deadline)
{
    PyObject *factory = NULL, *timer = NULL, *start = NULL, *expired = NULL, *r = NULL;
    PyObject *args[2];
    double delay;
    int rc = -1;

    if (waiter_stop_timer(self) < 0) {
        return -1;
    }
    delay = deadline - monotonic();
    if (delay < 0.0) {
        delay = 0.0;
    }
    /* loop.timer(delay, ref=False).start(self._expired, update=True) */
    if ((factory = PyObject_GetAttr(self->loop, str_timer)) == NULL) {
        goto done;
    }
    args[0] = PyFloat_FromDouble(delay);
    if (args[0] == NULL) {
        goto done;
    }
    args[1] = Py_False;
    {
        PyObject *kwnames = PyTuple_Pack(1, str_ref);
        if (kwnames == NULL) {
            Py_DECREF(args[0]);
            goto done;
        }
        timer = PyObject_Vectorcall(factory, args, 1, kwnames);
        Py_DECREF(kwnames);
    }
    Py_DECREF(args[0]);
    if (timer == NULL) {
        goto done;
    }
    if ((start = PyObject_GetAttr(timer, str_start)) == NULL ||
        (expired = PyObject_GetAttr((PyObject *)self, str__expired)) == NULL) {
        goto done;
    }
    args[0] = expired;
    args[1] = Py_True;
    {
        PyObject *kwnames = PyTuple_Pack(1, str_update);
        if (kwnames == NULL) {
            goto done;
        }
        /* The waiter's timer before it starts: Python that start() runs once it has
           started it may see it fire (_expired() clears it: the wait sees it gone). */
        Py_XSETREF(self->timer, Py_NewRef(timer)); /* none: only this arming sets it */
        self->timer_at = deadline;
        r = PyObject_Vectorcall(start, args, 1, kwnames);
        Py_DECREF(kwnames);
    }
    if (r == NULL) {
        /* start() may have started it before raising (Python it ran after): stopped
           and closed, unless it fired meanwhile or a close() meanwhile did that. */
        if (self->timer == timer) {
            PyObject *type, *value, *tb;
            PyErr_Fetch(&type, &value, &tb);
            (void)raise_after_tidying(waiter_stop_timer(self), type, value, tb);
        }
        goto done;
    }
    rc = 0;
done:
    Py_XDECREF(r);
    Py_XDECREF(expired);
    Py_XDECREF(start);
    Py_XDECREF(timer);
    Py_XDECREF(factory);
    return rc;
}

static int
waiter_close_io(Waiter *self)
{
    self->io_active = 0;
    Py_CLEAR(self->last);
    Py_CLEAR(self->last_switch);
    if (self->io_closed) {
        return 0;
    }
    self->io_closed = 1;
    return call_method_void(self->io, str_close, NULL);
}

/* Unref the io watcher again; if close() came during the wait (from any thread), free
   the watchers now, in the hub's thread (a close_in_hub still to come finds it done). */
static int
waiter_after_wait(Waiter *self)
{
    if (self->io == NULL) {
        return 0;
    }
    if (PyObject_SetAttr(self->io, str_ref, Py_False) < 0) {
        return -1;
    }
    if (!self->closed) {
        return 0;
    }
    self->torn_down = 1;
    if (waiter_stop_timer(self) < 0) {
        return -1;
    }
    return waiter_close_io(self);
}

/* A wait until `deadline` needs a timer the waiter does not have: none armed, or one
   armed for a later deadline (or fired meanwhile: _expired() cleared it). */
static inline int
waiter_lacks_timer(Waiter *self, double deadline)
{
    return deadline < INFINITY && (self->timer == NULL || self->timer_at > deadline);
}

/* waiter_wait()'s calls before the switch, made for `current` (all may run Python): the
   wake's target, the timer, the io watcher started and ref'd. 0, or -1 with an exception. */
static int
waiter_arm_all(Waiter *self, PyObject *current, double deadline)
{
    PyObject *r;

    if (current != self->last) {
        PyObject *sw = PyObject_GetAttr(current, str_switch);
        if (sw == NULL) {
            return -1;
        }
        Py_XSETREF(self->last, Py_NewRef(current));
        Py_XSETREF(self->last_switch, sw);
    }
    if (waiter_lacks_timer(self, deadline)) {
        if (waiter_arm(self, deadline) < 0) {
            return -1;
        }
    }
    if (!self->io_active) {
        PyObject *ready = PyObject_GetAttr((PyObject *)self, str__ready);
        if (ready == NULL) {
            return -1;
        }
        /* Counted as started before start() runs: Python that start() runs once it has
           started the watcher may see it fire with nobody waiting yet, and _ready() then
           stops it (else the loop calls it again at every turn meanwhile); the wait sees
           it stopped and ends. */
        self->io_active = 1;
        r = PyObject_CallMethodOneArg(self->io, str_start, ready);
        Py_DECREF(ready);
        if (r == NULL) {
            /* It may have started it before raising: stopped, as the timer is (unless
               a close() meanwhile closed it). */
            PyObject *type, *value, *tb;
            self->io_active = 0;
            PyErr_Fetch(&type, &value, &tb);
            return raise_after_tidying(
                self->io_closed ? 0 : call_method_void(self->io, str_stop, NULL), type, value,
                tb);
        }
        Py_DECREF(r);
        self->io_closed = 0; /* started again after a close() meanwhile: closed again */
    }
    /* The watcher keeps the loop alive only while someone waits on it (ref), as gevent's
       own waits do: a loop with nothing else to do still ends (LoopExit). */
    return PyObject_SetAttr(self->io, str_ref, Py_True);
}

/*
 * Wait until the socket is readable or the monotonic time ``deadline`` (INFINITY: no
 * limit). 1: readable; 0: woken otherwise (the timer, maybe armed for an earlier
 * deadline, a stray switch, or close()); 2: this waiter cannot be used (closed, another greenlet
 * waits, another thread, or the caller is the hub); -1: an exception (one thrown into the
 * waiting greenlet, say).
 *
 * The io watcher stays started between waits: a message read, answered and waited for
 * again costs no start()/stop(). When it fires with nobody waiting, _ready() stops it.
 *
 * The calls that arm the wait may run Python (rule 1 at the top of this file), which may
 * yield to the hub and to other greenlets. So the wait counts as begun (arming) before
 * them: another wait meanwhile, by any greenlet, is refused (2, as _GeventReadWaiter's
 * _waiting refuses it), else it would arm a timer of its own that this one's replaced
 * (a reference and a started timer lost). And the checks are made again after them: a
 * close() meanwhile (which cleared last_switch, the wake's target) ends this wait as one
 * during it would; a timer that fired meanwhile (found nobody waiting, so woke nobody) or
 * a watcher _ready() stopped meanwhile (readable with nobody waiting yet) ends it too (0:
 * the caller checks the time and waits again), instead of a wait past its deadline or
 * on a watcher that no longer watches.
 */
static int
waiter_wait(Waiter *self, double deadline)
{
    PyObject *current, *r;
    int readable, rc;

    if (self->closed || self->waiting || self->arming ||
        PyThread_get_thread_ident() != self->thread) {
        return 2;
    }
    self->arming = 1;
    current = PyObject_CallNoArgs(getcurrent);
    if (current == NULL) {
        self->arming = 0;
        return -1;
    }
    if (current == self->hub) {
        self->arming = 0;
        Py_DECREF(current);
        return 2;
    }
    rc = waiter_arm_all(self, current, deadline);
    self->arming = 0;
    if (rc == 0 && (self->closed || self->last != current || !self->io_active ||
                    waiter_lacks_timer(self, deadline))) {
        rc = 1; /* Python ran since the checks above, and ended this wait (see above) */
    }
    Py_DECREF(current);
    if (rc < 0) {
        /* Tidied up as after a wait: the io watcher unref'd (a ref setter may set it, then
           raise) and, after a close() meanwhile, the watchers freed (the io watcher may
           have been started again since), as _GeventReadWaiter.wait()'s finally does. */
        PyObject *type, *value, *tb;
        PyErr_Fetch(&type, &value, &tb);
        return raise_after_tidying(waiter_after_wait(self), type, value, tb);
    }
    if (rc == 1) {
        return waiter_after_wait(self) < 0 ? -1 : 0;
    }
    /* Nothing that may run Python from the checks to the switch. */
    self->waiting = 1;
    r = PyObject_CallNoArgs(self->hub_switch);
    self->waiting = 0;
    if (r == NULL) { /* thrown into the greenlet: tidy up, keep that exception */
        PyObject *type, *value, *tb;
        PyErr_Fetch(&type, &value, &tb);
        if (waiter_after_wait(self) < 0) {
            PyErr_WriteUnraisable((PyObject *)self);
        }
        PyErr_Restore(type, value, tb);
        return -1;
    }
    if (waiter_after_wait(self) < 0) {
        Py_DECREF(r);
        return -1;
    }
    readable = r == Py_True && !self->closed; /* closed: the fd may be another's */
    Py_DECREF(r);
    return readable;
}

/* Switch to the waiting greenlet with ``value``; the io watcher's and timer's callback. */
static PyObject *
waiter_wake(Waiter *self, PyObject *value)
{
    PyObject *sw = self->last_switch, *r;
    Py_INCREF(sw); /* a wait by another greenlet may replace it meanwhile */
    r = PyObject_CallOneArg(sw, value);
    Py_DECREF(sw);
    return r;
}

static PyObject *
Waiter_ready(Waiter *self, PyObject *Py_UNUSED(ignored))
{
    if (self->waiting) {
        return waiter_wake(self, Py_True);
    }
    /* Readable with nobody waiting (the greenlet is busy, or blocked on something else):
       stop watching until the next wait, or libev would call again at every turn. */
    if (self->io_active) {
        self->io_active = 0;
        if (call_method_void(self->io, str_stop, NULL) < 0) {
            return NULL;
        }
    }
    Py_RETURN_NONE;
}

static PyObject *
Waiter_expired(Waiter *self, PyObject *Py_UNUSED(ignored))
{
    Py_CLEAR(self->timer);
    if (self->waiting) {
        return waiter_wake(self, Py_False);
    }
    Py_RETURN_NONE;
}

static PyObject *
Waiter_wait(Waiter *self, PyObject *arg)
{
    double deadline;
    int r;

    if (optional_seconds(arg, &deadline) < 0) {
        return NULL;
    }
    r = waiter_wait(self, isnan(deadline) ? INFINITY : deadline);
    switch (r) {
    case -1:
        return NULL;
    case 2:
        Py_RETURN_NONE;
    default:
        return PyBool_FromLong(r);
    }
}

/* Stop the timer and close the io watcher, once; in the hub's thread. A wait in progress
   ends (False) and closes the io watcher on its way out, woken through _expired(), which
   switches only if the greenlet still waits then (never a stray switch). */
static int
waiter_teardown(Waiter *self)
{
    PyObject *expired;
    int rc;

    if (self->torn_down) {
        return 0;
    }
    self->torn_down = 1;
    if (waiter_stop_timer(self) < 0) {
        return -1;
    }
    if (!self->waiting) {
        return waiter_close_io(self);
    }
    if ((expired = PyObject_GetAttr((PyObject *)self, str__expired)) == NULL) {
        return -1;
    }
    rc = call_method_void(self->loop, str_run_callback, expired);
    Py_DECREF(expired);
    return rc;
}

static PyObject *
Waiter_close(Waiter *self, PyObject *Py_UNUSED(ignored))
{
    PyObject *callback;
    int rc;

    /* At once, whatever the thread: a wait woken from now on reads nothing, since the fd
       may soon be another connection's. */
    self->closed = 1;
    if (self->torn_down || self->close_scheduled) {
        Py_RETURN_NONE;
    }
    if (PyThread_get_thread_ident() != self->thread) {
        /* Another OS thread: the hub's may be inside libev without the GIL, so the
           watchers are only touched there (transport._GeventReadWaiter.close). */
        if ((callback = PyObject_GetAttr((PyObject *)self, str__close_in_hub)) == NULL) {
            return NULL;
        }
        rc = call_method_void(self->loop, str_run_callback_threadsafe, callback);
        Py_DECREF(callback);
        if (rc < 0) {
            return NULL;
        }
        self->close_scheduled = 1;
        Py_RETURN_NONE;
    }
    if (waiter_teardown(self) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *
Waiter_close_in_hub(Waiter *self, PyObject *Py_UNUSED(ignored))
{
    if (waiter_teardown(self) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyMethodDef Waiter_methods[] = {
    {"wait", (PyCFunction)Waiter_wait, METH_O,
     "wait(deadline) -> True when readable; False when a timer fired, maybe before "
     "deadline (a monotonic time; None: no limit); None when this waiter cannot be used "
     "(closed, another greenlet waits, another thread, or called from the hub)."},
    {"close", (PyCFunction)Waiter_close, METH_NOARGS,
     "Free the watchers; a wait in progress ends (False) and later ones return None. From "
     "another thread than the hub's, the watchers are freed in the hub's thread."},
    {"_close_in_hub", (PyCFunction)Waiter_close_in_hub, METH_NOARGS,
     "close()'s second half, run by the hub when close() came from another thread."},
    {"_ready", (PyCFunction)Waiter_ready, METH_NOARGS, "The io watcher's callback."},
    {"_expired", (PyCFunction)Waiter_expired, METH_NOARGS, "The timer's callback."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject Waiter_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "dwebsocket.backends.default._fastpath.Waiter",
    .tp_doc = "Waiter(hub, fd): waits until fd is readable on the gevent hub's loop "
              "(transport._GeventReadWaiter in C).",
    .tp_basicsize = sizeof(Waiter),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = Waiter_new,
    .tp_traverse = (traverseproc)Waiter_traverse,
    .tp_clear = (inquiry)Waiter_clear,
    .tp_dealloc = (destructor)Waiter_dealloc,
    .tp_methods = Waiter_methods,
};

/* -- FastPath ------------------------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    Waiter *waiter;
    IOState *io;            /* DefaultWebSocket._io */
    DwsReceiveState *rx;    /* its Connection.rx */
    PyObject *ws;           /* the DefaultWebSocket */
    PyObject *reading, *writing, *core; /* its three locks */
    PyObject *release_idle; /* dwebsocket.db.release_idle_connections */
    double ping_interval, ping_timeout; /* NAN: None */
    double db_interval;     /* dwebsocket.db.CHECK_INTERVAL */
    int fd;
    int deflate;            /* permessage-deflate negotiated */
    PyObject *deflater;     /* its _deflate.Deflater and Inflater (PerMessageDeflate's), */
    PyObject *inflater;     /* or NULL: then compressed frames go through Python */
    Py_ssize_t backlog_bytes; /* DefaultWebSocket._backlog_bytes */
} FastPath;

static PyObject *
FastPath_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"ws", "io", "rx", "waiter", "fd", "reading",
                             "writing", "core", "release_idle", "ping_interval",
                             "ping_timeout", "db_interval", "deflate", "deflater", "inflater",
                             "backlog_bytes", NULL};
    PyObject *ws, *io, *rx, *waiter, *reading, *writing, *core;
    PyObject *release_idle, *ping_interval, *ping_timeout;
    PyObject *deflater = Py_None, *inflater = Py_None;
    double db_interval;
    Py_ssize_t backlog_bytes = 1 << 20;
    int fd, deflate;
    FastPath *self;

    if (!PyArg_ParseTupleAndKeywords(args, kwds, "$OO!O!O!iOOOOOOdpOOn:FastPath", kwlist,
                                     &ws, &IOState_Type, &io, speedups->receive_state_type,
                                     &rx, &Waiter_Type, &waiter, &fd, &reading, &writing, &core, &release_idle, &ping_interval,
                                     &ping_timeout, &db_interval, &deflate, &deflater,
                                     &inflater, &backlog_bytes)) {
        return NULL;
    }
    /* Only _deflate's own types: their C API runs no Python code (any other stream, the
       zlib module's twin, goes through Python). */
    if (!deflate || zcodec == NULL || !Py_IS_TYPE(deflater, zcodec->deflater_type)) {
        deflater = Py_None;
    }
    if (!deflate || zcodec == NULL || !Py_IS_TYPE(inflater, zcodec->inflater_type)) {
        inflater = Py_None;
    }
    self = (FastPath *)type->tp_alloc(type, 0);
    if (self == NULL) {
        return NULL;
    }
    if (optional_seconds(ping_interval, &self->ping_interval) < 0 ||
        optional_seconds(ping_timeout, &self->ping_timeout) < 0) {
        Py_DECREF(self);
        return NULL;
    }
    self->waiter = (Waiter *)Py_NewRef(waiter);
    self->io = (IOState *)Py_NewRef(io);
    self->rx = (DwsReceiveState *)Py_NewRef(rx);
    self->ws = Py_NewRef(ws);
    self->reading = Py_NewRef(reading);
    self->writing = Py_NewRef(writing);
    self->core = Py_NewRef(core);
    self->release_idle = Py_NewRef(release_idle);
    self->db_interval = db_interval;
    self->fd = fd;
    self->deflate = deflate;
    self->deflater = deflater == Py_None ? NULL : Py_NewRef(deflater);
    self->inflater = inflater == Py_None ? NULL : Py_NewRef(inflater);
    self->backlog_bytes = backlog_bytes;
    return (PyObject *)self;
}

static int
FastPath_traverse(FastPath *self, visitproc visit, void *arg)
{
    Py_VISIT(self->waiter);
    Py_VISIT(self->io);
    Py_VISIT(self->rx);
    Py_VISIT(self->ws);
    Py_VISIT(self->reading);
    Py_VISIT(self->writing);
    Py_VISIT(self->core);
    Py_VISIT(self->release_idle);
    Py_VISIT(self->deflater);
    Py_VISIT(self->inflater);
    return 0;
}

static int
FastPath_clear(FastPath *self)
{
    Py_CLEAR(self->waiter);
    Py_CLEAR(self->io);
    Py_CLEAR(self->rx);
    Py_CLEAR(self->ws);
    Py_CLEAR(self->reading);
    Py_CLEAR(self->writing);
    Py_CLEAR(self->core);
    Py_CLEAR(self->release_idle);
    Py_CLEAR(self->deflater);
    Py_CLEAR(self->inflater);
    return 0;
}

static void
FastPath_dealloc(FastPath *self)
{
    PyObject_GC_UnTrack(self);
    FastPath_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* obj.name() as a truth value: 1, 0, or -1 with an exception. May run Python. */
static int
call_true(PyObject *obj, PyObject *name)
{
    PyObject *r = PyObject_CallMethodNoArgs(obj, name);
    int b;
    if (r == NULL) {
        return -1;
    }
    b = PyObject_IsTrue(r);
    Py_DECREF(r);
    return b;
}

/* The connection is open, by the structs alone (DefaultWebSocket.is_closed()): runs no
   Python. Read after the last call that may run Python, before the system call. */
static int
fast_is_open(FastPath *self)
{
    return !self->io->shut && self->rx->open && !self->waiter->closed;
}

/* Transport.wait_readable() once the wait is known to block: release the thread's idle
   database connections at most every db_interval, cutting the wait there if it would
   outlast the next check (the rule of dwebsocket.db.wait_releasing, which the Python path
   calls). 1 readable, 0 not, 2 waiter unusable, -1 exception. Runs Python (the wait,
   release_idle()). */
static int
fast_wait_readable(FastPath *self, double now, double until)
{
    double check_at = self->io->db_checked + self->db_interval;
    PyObject *r;
    int rc;

    if (now < check_at) {
        if (until <= check_at) {
            return waiter_wait(self->waiter, until);
        }
        if ((rc = waiter_wait(self->waiter, check_at)) != 0) {
            return rc;
        }
        now = monotonic();
        if (now >= until) {
            return 0;
        }
    }
    self->io->db_checked = now;
    if ((r = PyObject_CallNoArgs(self->release_idle)) == NULL) {
        return -1;
    }
    Py_DECREF(r);
    return waiter_wait(self->waiter, until);
}

/* Hand bytes read to DefaultWebSocket._received() (the general path). Runs Python. */
static int
give_to_python(FastPath *self, PyObject *bytes)
{
    PyObject *r = PyObject_CallMethodOneArg(self->ws, str__received, bytes);
    if (r == NULL) {
        return -1;
    }
    Py_DECREF(r);
    return 0;
}

/* An exception is set and the stream cannot go on: fail the connection with
   DefaultWebSocket's method `name` and keep the exception, as the Python path's `raise`
   after it does (an exception from that method itself goes on instead, with the first as
   its context). Returns -1. Runs Python: nothing after it but the return. */
static int
fail_connection(FastPath *self, PyObject *name)
{
    PyObject *type, *value, *tb, *r;

    PyErr_Fetch(&type, &value, &tb);
    r = PyObject_CallMethodNoArgs(self->ws, name);
    Py_XDECREF(r);
    return raise_after_tidying(r == NULL ? -1 : 0, type, value, tb);
}

/*
 * What a read took off the socket is lost: an exception after the read(2), before its
 * messages were queued and its rest handed to _received() (an allocation that failed,
 * or an exception from Python code run meanwhile). Reading on would begin in the middle
 * of a frame, so fail the connection as the Python path does in the same place
 * (DefaultWebSocket._lost_received(): 1011). Returns -1. Runs Python: call it after the
 * lease ends.
 */
static int
lost_read(FastPath *self)
{
    return fail_connection(self, str__lost_received);
}

/*
 * Part of a frame went to the kernel and its rest is lost (the allocation that keeps it
 * failed, or _send_rest() raised: before its write, or the write interrupted), or a
 * compressed message is in the deflater's context and not on the wire. The next frame
 * would land in the middle of this one (or in a context the peer lacks), so fail the
 * connection as the Python path does in the same place
 * (DefaultWebSocket._write_interrupted(), from _sendall(): shut down, 1006; no close
 * frame can follow). Returns -1.
 */
static int
lost_write(FastPath *self)
{
    return fail_connection(self, str__write_interrupted);
}

/* Queue items[start:] in IOState.messages, making the deque if there is none
   (DefaultWebSocket._feed()). Call with the read lock held. May run Python: the new deque
   is a GC-tracked allocation (an exact deque's append() allocates only its own blocks). */
static int
queue_messages(FastPath *self, PyObject *items, Py_ssize_t start)
{
    Py_ssize_t i, n = PyList_GET_SIZE(items);
    PyObject *queue;
    int rc = 0;

    if (start >= n) {
        return 0;
    }
    if (queue_of(self->io) == NULL) {
        PyObject *made = PyObject_CallNoArgs((PyObject *)deque_type);
        if (made == NULL) {
            return -1;
        }
        if (queue_of(self->io) == NULL) { /* still none after the allocation */
            Py_XSETREF(self->io->messages, made);
        }
        else {
            Py_DECREF(made);
        }
    }
    queue = Py_NewRef(queue_of(self->io));
    for (i = start; i < n && rc == 0; i++) {
        rc = call_method_void(queue, str_append, PyList_GET_ITEM(items, i));
    }
    Py_DECREF(queue);
    return rc;
}

/* The receive buffer of this thread, and its lease (see the top of this file). */
static _Thread_local uint8_t recv_buf[RECV_SIZE];
static _Thread_local char recv_buf_leased;

/*
 * The core's receive loop on recv_buf[0:n] (under the lease): scan_frames() takes the
 * whole uncompressed messages, and this the whole compressed ones (RFC 7692: a final
 * text or binary frame with RSV1), as Connection._receive_frame() and
 * PerMessageDeflate.decompress() take them, while `inflater` is set. Stops at anything
 * else, at a compressed message inflate_message() does not take (corrupt, too large,
 * the peer ended the stream: its outcome is kept for Python's decompress(), so
 * deflate.py's rules decide) or that is not UTF-8 (likewise), and once the messages
 * taken total backlog_bytes (DefaultWebSocket._receive()'s bound: a read of small
 * compressed frames cannot expand into more than about one message past the backlog).
 * Returns where it stopped, or -1 with an exception. Runs no Python code.
 */
static Py_ssize_t
scan_read(const uint8_t *buf, Py_ssize_t n, Py_ssize_t limit, PyObject *inflater,
          Py_ssize_t max_message, Py_ssize_t backlog_bytes, PyObject *out)
{
    Py_ssize_t pos = 0, taken = 0, counted = 0;
    uint8_t stack[512];

    for (;;) {
        Py_ssize_t start, length, end, i, out_len;
        const uint8_t *key, *data;
        uint8_t *payload, b0, b1;
        PyObject *message;
        int rc;

        pos = speedups->scan_frames(buf, n, pos, 1, limit, out);
        if (pos < 0 || inflater == NULL || n - pos < 2) {
            return pos;
        }
        for (i = counted; i < PyList_GET_SIZE(out); i++) { /* what scan_frames() took */
            taken += PyObject_Length(PyList_GET_ITEM(out, i));
        }
        counted = PyList_GET_SIZE(out);
        b0 = buf[pos];
        b1 = buf[pos + 1];
        if ((b0 != 0xC1 && b0 != 0xC2) || !(b1 & 0x80) || taken >= backlog_bytes) {
            return pos;
        }
        length = b1 & 0x7F;
        start = pos + 2;
        if (length == 126) {
            if (n - pos < 4) {
                return pos;
            }
            length = ((Py_ssize_t)buf[pos + 2] << 8) | buf[pos + 3];
            start = pos + 4;
        }
        else if (length == 127) {
            uint64_t big = 0;
            if (n - pos < 10) {
                return pos;
            }
            for (i = 0; i < 8; i++) {
                big = (big << 8) | buf[pos + 2 + i];
            }
            if (big > (uint64_t)limit) {
                return pos;
            }
            length = (Py_ssize_t)big;
            start = pos + 10;
        }
        start += 4; /* the mask key */
        if (length > limit || start > n || length > n - start) {
            return pos;
        }
        end = start + length;
        /* The payload unmasked, then the tail deflate.py appends (RFC 7692 7.2.2). */
        payload = length + 4 <= (Py_ssize_t)sizeof(stack) ? stack : PyMem_Malloc(length + 4);
        if (payload == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        key = buf + start - 4;
        for (i = 0; i < length; i++) {
            payload[i] = buf[start + i] ^ key[i & 3];
        }
        memcpy(payload + length, "\x00\x00\xff\xff", 4);
        rc = zcodec->inflate_message(inflater, payload, length + 4, max_message, &data,
                                     &out_len);
        if (rc == 1) {
            rc = speedups->make_message(b0 == 0xC1, data, out_len, &message);
            if (rc == 0 &&
                zcodec->keep_outcome(inflater, payload, length + 4, data, out_len) < 0) {
                rc = -1; /* not UTF-8: Python fails it with 1007, from the kept outcome */
            }
        }
        if (payload != stack) {
            PyMem_Free(payload);
        }
        if (rc <= 0) {
            return rc < 0 ? -1 : pos;
        }
        if (PyList_Append(out, message) < 0) {
            Py_DECREF(message);
            return -1;
        }
        Py_DECREF(message);
        taken += out_len;
        counted++;
        pos = end;
    }
}

/*
 * A large frame that one read began: what scan_frames() would take (a whole final text or
 * binary frame, masked, no RSV bit, at most `limit` bytes of payload) were it all there,
 * at the start of buf[0:n], with its header whole and its payload not. Its rest is read
 * straight into the message (read_big_frame()), instead of going through the core's
 * buffer (bench/FINDINGS.md, section 15). Taken only when at least half of its payload
 * is here, so that its rest is likely in the socket already (read_big_frame() does not
 * wait: a frame mostly still to come goes the general way, which waits for it, and the
 * message allocated for it never outlives the call), and only when it is the first
 * frame of the read (nothing scanned before it: with
 * permessage-deflate the backlog is then empty, as DefaultWebSocket._receive() would find
 * it at every slice of the frame). 1 and *big set, or 0. Runs no Python code.
 */
typedef struct {
    uint8_t header[14]; /* the header and the mask key, as received */
    Py_ssize_t hlen;    /* their length */
    Py_ssize_t length;  /* the payload's */
    Py_ssize_t have;    /* of which buf holds this much */
} BigFrame;

#define BIG_FRAME_MIN 4096 /* smaller frames split over reads go the general way */

static int
big_frame_at(const uint8_t *buf, Py_ssize_t n, Py_ssize_t limit, BigFrame *big)
{
    uint8_t b0, b1;
    Py_ssize_t length, hlen;
    int i;

    if (n < 2) {
        return 0;
    }
    b0 = buf[0];
    b1 = buf[1];
    if ((b0 != 0x81 && b0 != 0x82) || !(b1 & 0x80)) {
        return 0;
    }
    length = b1 & 0x7F;
    if (length < 126) {
        return 0; /* under BIG_FRAME_MIN */
    }
    if (length == 126) {
        hlen = 8;
        if (n < hlen) {
            return 0;
        }
        length = ((Py_ssize_t)buf[2] << 8) | buf[3];
    }
    else {
        uint64_t declared = 0;
        hlen = 14;
        if (n < hlen) {
            return 0;
        }
        for (i = 0; i < 8; i++) {
            declared = (declared << 8) | buf[2 + i];
        }
        if (declared > (uint64_t)PY_SSIZE_T_MAX) {
            return 0;
        }
        length = (Py_ssize_t)declared;
    }
    if (length < BIG_FRAME_MIN || length > limit || n - hlen >= length ||
        (n - hlen) < length - (n - hlen)) {
        return 0; /* small, too large for the core's fast path, whole, or mostly to come */
    }
    memcpy(big->header, buf, (size_t)hlen);
    big->hlen = hlen;
    big->length = length;
    big->have = n - hlen;
    return 1;
}

/*
 * The rest of `big` read from fd straight into `payload` (a bytes object of its
 * length holding its first big->have bytes, still masked), without waiting: the read of
 * the frame's start found most of it there. 1: the message is made (*message: `payload`
 * unmasked, or the str decoded from it); 0: not taken, *rest holds the frame's bytes as
 * received (header, key and the masked payload so far) for DefaultWebSocket._received(),
 * which decides: the socket had no more yet, EOF, an error, text that is not UTF-8;
 * -1: an exception. Steals `payload`; adds what it reads to *bytes_in. Runs no Python
 * code: called with the checks of fast_read_locked() still holding (nothing ran since).
 */
static int
read_big_frame(int fd, long long *bytes_in, BigFrame *big, PyObject *payload,
               PyObject **message, PyObject **rest)
{
    uint8_t *data = (uint8_t *)PyBytes_AS_STRING(payload);
    const uint8_t *key = big->header + big->hlen - 4;
    Py_ssize_t r;

    while (big->have < big->length) {
        r = read(fd, data + big->have, (size_t)(big->length - big->have));
        if (r > 0) {
            *bytes_in += r;
            big->have += r;
            continue;
        }
        if (r < 0 && errno == EINTR) {
            continue;
        }
        goto give_back; /* no more yet, EOF or an error: the general path reads on */
    }
    speedups->xor_mask(data, data, big->length, key);
    if (big->header[0] == 0x82) {
        *message = payload;
        return 1;
    }
    switch (speedups->make_message(1, data, big->length, message)) {
    case 1:
        Py_DECREF(payload);
        return 1;
    case 0: /* not UTF-8: the core fails it (1007) */
        speedups->xor_mask(data, data, big->length, key);
        goto give_back;
    default:
        Py_DECREF(payload);
        return -1;
    }
give_back:
    *rest = PyBytes_FromStringAndSize(NULL, big->hlen + big->have);
    if (*rest != NULL) {
        memcpy(PyBytes_AS_STRING(*rest), big->header, (size_t)big->hlen);
        memcpy(PyBytes_AS_STRING(*rest) + big->hlen, data, (size_t)big->have);
    }
    Py_DECREF(payload);
    return *rest == NULL ? -1 : 0;
}

/*
 * One wait and one read, holding the read lock: DefaultWebSocket._read_once() after its
 * keepalive arithmetic, Transport.wait_readable() and recv(), and the core's fast path on
 * what was read. Sets *message to the first message read if the scan took the whole read
 * (the deque was empty: that is why we read), queueing the rest. 1: read something (or
 * nothing complete yet); 0: the general path must take over; -1: an exception.
 */
static int
fast_read_locked(FastPath *self, double now, double until, PyObject **message)
{
    PyObject *out, *rest = NULL, *payload = NULL, *taken = NULL;
    Py_ssize_t n, pos, limit;
    BigFrame big;
    int rc;

    big.length = 0; /* no large frame (set by big_frame_at()) */
    /* 1. Everything that may run Python: the queue's end, the wait, the core lock's
       state, the list. An idle connection keeps no queue (DefaultWebSocket._read_once()):
       an empty one is dropped before the wait, under the read lock that its makers hold. */
    if (queue_of(self->io) != NULL && Py_IS_TYPE(self->io->messages, deque_type) &&
        PyObject_Length(self->io->messages) == 0) {
        Py_CLEAR(self->io->messages);
    }
    rc = fast_wait_readable(self, now, until);
    if (rc != 1) {
        return rc == -1 ? -1 : 0;
    }
    if ((rc = call_true(self->core, str_locked)) != 0) {
        return rc < 0 ? -1 : 0; /* someone is in the core: the general path waits for it */
    }
    if ((out = PyList_New(0)) == NULL) {
        return -1;
    }
    /* 2. The checks, on the structs: nothing between them and the read may run Python.
       Closed: released, the fd number may be another connection's. */
    if (!fast_is_open(self) || recv_buf_leased) {
        Py_DECREF(out);
        return 0;
    }
    limit = self->rx->scan_limit;
    /* 3. The read and the scan, under the lease; what is left is copied out of recv_buf
       before the lease ends. */
    recv_buf_leased = 1;
    n = read(self->fd, recv_buf, RECV_SIZE);
    if (n < 0) {
        recv_buf_leased = 0;
        Py_DECREF(out);
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) {
            return 0;
        }
        /* Transport.recv(): a broken connection reads as EOF */
        rest = PyBytes_FromStringAndSize(NULL, 0);
        goto give;
    }
    self->io->bytes_in += n; /* Transport.recv() counts the general path's reads */
    if (n >= 8 && (recv_buf[1] & 0x7F) >= 126 && limit >= 0 &&
        big_frame_at(recv_buf, n, limit, &big)) {
        /* The start of a large frame: its rest is read into its message (below). A bytes
           object is not GC-tracked: its allocation runs no Python code. */
        if ((payload = PyBytes_FromStringAndSize(NULL, big.length)) != NULL) {
            memcpy(PyBytes_AS_STRING(payload), recv_buf + big.hlen, (size_t)big.have);
        }
        pos = n;
    }
    else if (n == 0 || n == RECV_SIZE || limit < 0) {
        /* EOF, a read that filled the buffer (the general path reads on at once), or
           nothing the scan may take */
        rest = PyBytes_FromStringAndSize((const char *)recv_buf, n);
        recv_buf_leased = 0;
        Py_DECREF(out);
        goto give;
    }
    else {
        pos = scan_read(recv_buf, n, limit, self->inflater, self->rx->max_message,
                        self->backlog_bytes, out);
        if (pos >= 0 && pos < n) {
            rest = PyBytes_FromStringAndSize((const char *)recv_buf + pos, n - pos);
        }
    }
    recv_buf_leased = 0;
    if (big.length > 0) {
        /* Still nothing that may run Python: the checks above hold for its reads. */
        if (payload == NULL) {
            Py_DECREF(out);
            return lost_read(self);
        }
        if ((rc = read_big_frame(self->fd, &self->io->bytes_in, &big, payload, &taken,
                                 &rest)) < 0) {
            Py_DECREF(out);
            return lost_read(self);
        }
        if (rc == 1) {
            rc = PyList_Append(out, taken);
            Py_DECREF(taken);
            if (rc < 0) {
                Py_DECREF(out);
                return lost_read(self);
            }
        }
    }
    /* 4. From here Python may run again. Any failure until the messages are queued and
       the rest handed over loses what was read: lost_read() fails the connection. */
    if (pos < 0 || (pos < n && rest == NULL)) {
        Py_XDECREF(rest);
        Py_DECREF(out);
        return lost_read(self);
    }
    if (rest != NULL) {
        /* The rest goes the general way, after the messages scanned before it. */
        self->io->messages_in += PyList_GET_SIZE(out); /* _feed() counts the rest's */
        rc = queue_messages(self, out, 0);
        Py_DECREF(out);
        if (rc < 0) {
            Py_DECREF(rest);
            return lost_read(self);
        }
        goto give;
    }
    /* DefaultWebSocket._feed(): heard from the peer, so no ping is outstanding. */
    self->io->last_heard = monotonic();
    self->io->ping_outstanding = 0;
    self->io->messages_in += PyList_GET_SIZE(out);
    if (queue_messages(self, out, 1) < 0) {
        Py_DECREF(out);
        return lost_read(self);
    }
    *message = Py_NewRef(PyList_GET_ITEM(out, 0));
    Py_DECREF(out);
    return 1;
give:
    if (rest == NULL) {
        return lost_read(self);
    }
    /* What _received() raises, it decides on (DefaultWebSocket._feed() fails the
       connection if the bytes were lost). */
    rc = give_to_python(self, rest);
    Py_DECREF(rest);
    return rc < 0 ? -1 : 1;
}

/*
 * FastPath.wait(deadline) -> message, or None: DefaultWebSocket.wait() while the
 * connection is open and this thread's hub waits on it. None when it cannot decide alone:
 * closed, timed out, a keepalive ping due, the read lock or the waiter taken, deflate's
 * backlog pending; the caller then runs the general wait(), which sorts it out.
 */
static PyObject *
FastPath_wait(FastPath *self, PyObject *arg)
{
    double deadline;

    if (optional_seconds(arg, &deadline) < 0) {
        return NULL;
    }
    if (isnan(deadline)) {
        deadline = INFINITY;
    }
    if (PyThread_get_thread_ident() != self->waiter->thread) {
        Py_RETURN_NONE; /* the locks are the hub thread's */
    }
    for (;;) {
        PyObject *message = NULL, *acquired, *queue = queue_of(self->io);
        double until = deadline, now;
        int rc;

        if (queue != NULL) {
            Py_ssize_t queued;
            if (!Py_IS_TYPE(queue, deque_type)) {
                Py_RETURN_NONE; /* a subclass could run Python in popleft(): wait() pops */
            }
            if ((queued = PyObject_Length(queue)) > 0) {
                Py_INCREF(queue);
                message = PyObject_CallMethodNoArgs(queue, str_popleft);
                Py_DECREF(queue);
                return message;
            }
        }
        if (!fast_is_open(self) || self->io->unfed) {
            Py_RETURN_NONE; /* closed; or _read_once() feeds the backlog first */
        }
        /* _read_once(): wait no longer than until the keepalive has something to do. */
        if (!isnan(self->ping_interval)) {
            double due;
            if (!self->io->ping_outstanding) {
                due = self->io->last_heard + self->ping_interval;
            }
            else {
                due = isnan(self->ping_timeout) ? INFINITY
                                                : self->io->ping_sent_at + self->ping_timeout;
            }
            if (due < until) {
                until = due;
            }
        }
        now = monotonic();
        if (until <= now) {
            Py_RETURN_NONE; /* timed out, or a ping is due: _keepalive() */
        }
        acquired = PyObject_CallMethodOneArg(self->reading, str_acquire, Py_False);
        if (acquired == NULL) {
            return NULL;
        }
        rc = PyObject_IsTrue(acquired);
        Py_DECREF(acquired);
        if (rc <= 0) {
            if (rc < 0) {
                return NULL;
            }
            Py_RETURN_NONE; /* another reader: wait() queues behind it */
        }
        rc = fast_read_locked(self, now, until, &message);
        {
            PyObject *type, *value, *tb, *r;
            PyErr_Fetch(&type, &value, &tb);
            r = PyObject_CallMethodNoArgs(self->reading, str_release);
            if (r == NULL) {
                if (type != NULL) {
                    PyErr_WriteUnraisable(self->reading);
                }
                else if (message != NULL) {
                    /* the message read is lost with this exception */
                    Py_DECREF(message);
                    (void)lost_read(self);
                    return NULL;
                }
                else {
                    return NULL;
                }
            }
            Py_XDECREF(r);
            PyErr_Restore(type, value, tb);
        }
        if (rc <= 0) {
            Py_XDECREF(message);
            if (rc < 0) {
                return NULL;
            }
            Py_RETURN_NONE;
        }
        if (message != NULL) {
            return message;
        }
    }
}

/*
 * FastPath.send(message) -> bool: DefaultWebSocket.send() of a str or bytes while the
 * connection is open, nothing is queued and no one writes (the lock order's write ->
 * core sections, done in one step). One write(2) of the frame (writev(2) of the header
 * and the payload past 2 KiB); the rest of a partial write goes to
 * DefaultWebSocket._send_rest() at once. False, having written nothing, whenever the
 * general send() must run instead: any other type, an encoding error, a compression
 * that failed, a lock held, a write that failed.
 */
static PyObject *
FastPath_send(FastPath *self, PyObject *message)
{
    const char *payload;
    Py_ssize_t length, total, sent, hlen;
    uint8_t header[10], small[2048], b0;
    struct iovec iov[2];
    PyObject *encoded = NULL, *rest, *r;
    int rc, compressed_frame = 0;

    if (PyUnicode_CheckExact(message)) {
        b0 = 0x81;
    }
    else if (PyBytes_CheckExact(message)) {
        b0 = 0x82;
    }
    else {
        Py_RETURN_FALSE;
    }
    if ((self->deflate && self->deflater == NULL) ||
        PyThread_get_thread_ident() != self->waiter->thread) {
        Py_RETURN_FALSE;
    }
    /* 1. What may run Python: the locks' state, the UTF-8 encoding (an allocation). */
    if ((rc = call_true(self->writing, str_locked)) != 0 ||
        (rc = call_true(self->core, str_locked)) != 0) {
        if (rc < 0) {
            return NULL;
        }
        Py_RETURN_FALSE;
    }
    if (b0 == 0x82) {
        payload = PyBytes_AS_STRING(message);
        length = PyBytes_GET_SIZE(message);
    }
    else {
#if PY_VERSION_HEX < 0x030C0000
        if (PyUnicode_READY(message) < 0) {
            return NULL;
        }
#endif
        if (PyUnicode_IS_ASCII(message)) { /* its characters are its UTF-8 */
            payload = (const char *)PyUnicode_DATA(message);
            length = PyUnicode_GET_LENGTH(message);
        }
        else {
            /* A temporary, as str.encode(): PyUnicode_AsUTF8AndSize() would keep a copy
               in the str for its whole life. */
            if ((encoded = PyUnicode_AsUTF8String(message)) == NULL) {
                PyErr_Clear(); /* lone surrogates: send() raises the encoder's error */
                Py_RETURN_FALSE;
            }
            payload = PyBytes_AS_STRING(encoded);
            length = PyBytes_GET_SIZE(encoded);
        }
    }
    /* 2. The checks, on the structs; then nothing may run Python until the write. */
    if (!fast_is_open(self) || self->io->queued) {
        Py_XDECREF(encoded);
        Py_RETURN_FALSE;
    }
    if (self->deflate) {
        /* Connection.send_text()/send_binary(): PerMessageDeflate.compress(), RSV1 set.
           The deflater's context moves on: from here the frame must go out whole, or the
           connection end (a send() run again would compress the message twice). */
        const uint8_t *compressed;
        Py_ssize_t clen = zcodec->compress_message(self->deflater, (const uint8_t *)payload,
                                                   length, &compressed);
        if (clen < 0) {
            /* Nothing written: the general send() runs, and Connection decides. A stream
               that failed after zlib began is lost (it refuses: the connection fails,
               1011); one that failed before (MemoryError getting a stream) is as it was. */
            PyErr_Clear();
            Py_XDECREF(encoded);
            Py_RETURN_FALSE;
        }
        payload = (const char *)compressed; /* zcodec's buffer, until its next call */
        length = clen;
        b0 |= 0x40;
        compressed_frame = 1;
    }
    hlen = speedups->encode_header(header, b0, length, 0); /* a server's frames: unmasked */
    total = hlen + length;
    if (total <= (Py_ssize_t)sizeof(small)) {
        /* write(2) of one buffer costs the kernel less than writev(2) of two */
        memcpy(small, header, (size_t)hlen);
        memcpy(small + hlen, payload, (size_t)length);
        sent = write(self->fd, small, (size_t)total);
    }
    else {
        iov[0].iov_base = header;
        iov[0].iov_len = (size_t)hlen;
        iov[1].iov_base = (void *)payload;
        iov[1].iov_len = (size_t)length;
        sent = writev(self->fd, iov, 2);
    }
    if (sent < 0) {
        if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR && !compressed_frame) {
            Py_XDECREF(encoded);
            Py_RETURN_FALSE; /* broken: the general send() fails the same way, and says so */
        }
        sent = 0; /* (compressed: _send_rest() fails the same way, and shuts down) */
    }
    /* The message is sent, or its rest follows (Transport.sendall() counts those bytes). */
    self->io->messages_out += 1;
    self->io->bytes_out += sent;
    if (sent == total) {
        Py_XDECREF(encoded);
        Py_RETURN_TRUE;
    }
    /* The kernel took part of the frame: the rest must follow before anything else. */
    rest = PyBytes_FromStringAndSize(NULL, total - sent);
    if (rest != NULL) {
        if (sent < hlen) {
            memcpy(PyBytes_AS_STRING(rest), header + sent, (size_t)(hlen - sent));
            memcpy(PyBytes_AS_STRING(rest) + (hlen - sent), payload, (size_t)length);
        }
        else {
            memcpy(PyBytes_AS_STRING(rest), payload + (sent - hlen), (size_t)(total - sent));
        }
    }
    Py_XDECREF(encoded);
    if (rest == NULL) {
        if (sent > 0 || compressed_frame) {
            (void)lost_write(self);
        } /* else nothing went, nothing was compressed: the connection is as it was */
        return NULL;
    }
    r = PyObject_CallMethodOneArg(self->ws, str__send_rest, rest);
    Py_DECREF(rest);
    if (r == NULL) {
        (void)lost_write(self); /* (a write that failed shut it down already) */
        return NULL;
    }
    Py_DECREF(r);
    Py_RETURN_TRUE;
}

static PyMethodDef FastPath_methods[] = {
    {"wait", (PyCFunction)FastPath_wait, METH_O,
     "wait(deadline) -> the next message, or None: then the general wait() must run "
     "(closed, timed out, keepalive due, busy). deadline: a monotonic time, or None."},
    {"send", (PyCFunction)FastPath_send, METH_O,
     "send(message) -> True once the str or bytes is handed to the kernel; False, having "
     "written nothing, when the general send() must run instead."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject FastPath_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "dwebsocket.backends.default._fastpath.FastPath",
    .tp_doc = "FastPath(*, ws, io, rx, waiter, fd, reading, writing, core, "
              "release_idle, ping_interval, ping_timeout, db_interval, deflate, deflater, "
              "inflater, backlog_bytes): "
              "DefaultWebSocket.wait() and send() in the common case (see _fastpath.c).",
    .tp_basicsize = sizeof(FastPath),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = FastPath_new,
    .tp_traverse = (traverseproc)FastPath_traverse,
    .tp_clear = (inquiry)FastPath_clear,
    .tp_dealloc = (destructor)FastPath_dealloc,
    .tp_methods = FastPath_methods,
};

/* -- Messages ------------------------------------------------------------------------- */

/*
 * Messages(ws): iter(DefaultWebSocket), i.e. WebSocket.__iter__() without its generator
 * and wait()'s Python frame per message: FastPath.wait() once there is one, else (and
 * whenever it returns None) ws.wait(); stops when that returns None and the connection
 * is closed. Finished for good once it stopped or an exception came out of it (a
 * gevent.Timeout thrown into the waiting greenlet, a kill), as the generator is. Unlike
 * the generator, several greenlets may be in next() at once (each gets its own
 * messages; none gets "generator already executing").
 */
typedef struct {
    PyObject_HEAD
    PyObject *ws;
} Messages;

static PyObject *
Messages_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"ws", NULL};
    PyObject *ws;
    Messages *self;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O:Messages", kwlist, &ws)) {
        return NULL;
    }
    if ((self = (Messages *)type->tp_alloc(type, 0)) == NULL) {
        return NULL;
    }
    self->ws = Py_NewRef(ws);
    return (PyObject *)self;
}

static int
Messages_traverse(Messages *self, visitproc visit, void *arg)
{
    Py_VISIT(self->ws);
    return 0;
}

static int
Messages_clear(Messages *self)
{
    Py_CLEAR(self->ws);
    return 0;
}

static void
Messages_dealloc(Messages *self)
{
    PyObject_GC_UnTrack(self);
    Messages_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *
Messages_next(Messages *self)
{
    PyObject *ws = self->ws, *result;
    if (ws == NULL) { /* finished: StopIteration */
        return NULL;
    }
    Py_INCREF(ws); /* another greenlet's next() may clear self->ws meanwhile */
    for (;;) {
        PyObject *fast = PyObject_GetAttr(ws, str__fast), *message;
        int closed;

        if (fast == NULL) {
            result = NULL;
            break;
        }
        if (Py_IS_TYPE(fast, &FastPath_Type)) {
            message = FastPath_wait((FastPath *)fast, Py_None);
            Py_DECREF(fast);
            if (message != Py_None) {
                result = message; /* or NULL: an exception */
                break;
            }
            Py_DECREF(message);
        }
        else {
            Py_DECREF(fast);
        }
        if ((message = PyObject_CallMethodNoArgs(ws, str_wait)) != Py_None) {
            result = message;
            break;
        }
        Py_DECREF(message);
        if ((closed = call_true(ws, str_is_closed)) != 0) {
            result = NULL; /* closed, or an exception */
            break;
        }
    }
    if (result == NULL && self->ws == ws) {
        Py_CLEAR(self->ws); /* exhausted, or an exception came out: finished for good */
    }
    Py_DECREF(ws);
    return result;
}

static PyTypeObject Messages_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "dwebsocket.backends.default._fastpath.Messages",
    .tp_doc = "Messages(ws): iterates over ws's messages until it is closed (see _fastpath.c).",
    .tp_basicsize = sizeof(Messages),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = Messages_new,
    .tp_traverse = (traverseproc)Messages_traverse,
    .tp_clear = (inquiry)Messages_clear,
    .tp_dealloc = (destructor)Messages_dealloc,
    .tp_iter = PyObject_SelfIter,
    .tp_iternext = (iternextfunc)Messages_next,
};

/* scan(buf, scan_limit, max_message, inflater, backlog_bytes, out) -> int: scan_read() on
   a buffer, for tests/fuzz to run the fast path's receive loop against the core's. */
static PyObject *
fastpath_scan(PyObject *module, PyObject *args)
{
    Py_buffer view;
    Py_ssize_t limit, max_message, backlog_bytes, pos;
    PyObject *inflater, *out;
    if (!PyArg_ParseTuple(args, "y*nnOnO!:scan", &view, &limit, &max_message, &inflater,
                          &backlog_bytes, &PyList_Type, &out)) {
        return NULL;
    }
    if (inflater == Py_None || zcodec == NULL || !Py_IS_TYPE(inflater, zcodec->inflater_type)) {
        inflater = NULL;
    }
    pos = scan_read(view.buf, view.len, limit, inflater, max_message, backlog_bytes, out);
    PyBuffer_Release(&view);
    return pos < 0 ? NULL : PyLong_FromSsize_t(pos);
}

/* read_large(buf, scan_limit, fd) -> None, or (message, None), or (None, given_back):
   the fast path's take on a read `buf` that begins a large frame (big_frame_at()), its
   rest read from fd (non-blocking) by read_big_frame(): for tests/fuzz, which run it
   against the core. None: not a large frame the fast path reads on (the scan takes buf). */
static PyObject *
fastpath_read_large(PyObject *module, PyObject *args)
{
    Py_buffer view;
    Py_ssize_t limit;
    int fd, rc;
    long long bytes_in = 0;
    BigFrame big;
    PyObject *payload, *message = NULL, *rest = NULL, *r;
    if (!PyArg_ParseTuple(args, "y*ni:read_large", &view, &limit, &fd)) {
        return NULL;
    }
    if (!big_frame_at(view.buf, view.len, limit, &big)) {
        PyBuffer_Release(&view);
        Py_RETURN_NONE;
    }
    payload = PyBytes_FromStringAndSize(NULL, big.length);
    if (payload != NULL) {
        memcpy(PyBytes_AS_STRING(payload), (const char *)view.buf + big.hlen, (size_t)big.have);
    }
    PyBuffer_Release(&view);
    if (payload == NULL) {
        return NULL;
    }
    if ((rc = read_big_frame(fd, &bytes_in, &big, payload, &message, &rest)) < 0) {
        return NULL;
    }
    r = rc == 1 ? PyTuple_Pack(2, message, Py_None) : PyTuple_Pack(2, Py_None, rest);
    Py_XDECREF(message);
    Py_XDECREF(rest);
    return r;
}

static PyMethodDef fastpath_functions[] = {
    {"scan", (PyCFunction)fastpath_scan, METH_VARARGS,
     "scan(buf, scan_limit, max_message, inflater, backlog_bytes, out) -> int: the fast "
     "path's receive loop on buf (a server's: masked frames); appends the messages it "
     "takes to out, returns where it stopped."},
    {"read_large", (PyCFunction)fastpath_read_large, METH_VARARGS,
     "read_large(buf, scan_limit, fd) -> None | (message, None) | (None, given_back): the "
     "fast path on a read that begins a large frame, its rest read from fd."},
    {NULL, NULL, 0, NULL},
};

/* -- the module ----------------------------------------------------------------------- */

static int
fastpath_exec(PyObject *module)
{
    PyObject *greenlet;

#define INTERN(name)                                                                        \
    if (str_##name == NULL && (str_##name = PyUnicode_InternFromString(#name)) == NULL) {   \
        return -1;                                                                          \
    }
    STR_NAMES(INTERN)
#undef INTERN
    if (speedups == NULL) {
        /* PyCapsule_Import() imports the top package only, then looks up attributes. */
        PyObject *module_speedups = PyImport_ImportModule("dwebsocket.protocol._speedups");
        if (module_speedups == NULL) {
            return -1;
        }
        Py_DECREF(module_speedups);
        speedups = (const DwsSpeedupsCAPI *)PyCapsule_Import(DWS_SPEEDUPS_CAPSULE, 0);
        if (speedups == NULL) {
            return -1;
        }
    }
    if (zcodec == NULL) {
        /* Optional: where _deflate is not built, compressed frames go through Python. */
        PyObject *module_deflate = PyImport_ImportModule("dwebsocket.protocol._deflate");
        if (module_deflate == NULL) {
            PyErr_Clear();
        }
        else {
            Py_DECREF(module_deflate);
            zcodec = (const DwsDeflateCAPI *)PyCapsule_Import(DWS_DEFLATE_CAPSULE, 0);
            if (zcodec == NULL) {
                return -1; /* built from another checkout: fail, don't misread memory */
            }
        }
    }
    if (deque_type == NULL) {
        PyObject *collections = PyImport_ImportModule("collections");
        if (collections == NULL) {
            return -1;
        }
        deque_type = (PyTypeObject *)PyObject_GetAttrString(collections, "deque");
        Py_DECREF(collections);
        if (deque_type == NULL) {
            return -1;
        }
    }
    if (getcurrent == NULL) {
        if ((greenlet = PyImport_ImportModule("greenlet")) == NULL) {
            return -1;
        }
        getcurrent = PyObject_GetAttrString(greenlet, "getcurrent");
        Py_DECREF(greenlet);
        if (getcurrent == NULL) {
            return -1;
        }
    }
    if (PyType_Ready(&IOState_Type) < 0 || PyType_Ready(&Waiter_Type) < 0 ||
        PyType_Ready(&FastPath_Type) < 0 || PyType_Ready(&Messages_Type) < 0) {
        return -1;
    }
    if (PyModule_AddObjectRef(module, "IOState", (PyObject *)&IOState_Type) < 0 ||
        PyModule_AddObjectRef(module, "Waiter", (PyObject *)&Waiter_Type) < 0 ||
        PyModule_AddObjectRef(module, "FastPath", (PyObject *)&FastPath_Type) < 0 ||
        PyModule_AddObjectRef(module, "Messages", (PyObject *)&Messages_Type) < 0) {
        return -1;
    }
    return 0;
}

static struct PyModuleDef_Slot fastpath_slots[] = {
    {Py_mod_exec, fastpath_exec},
#if PY_VERSION_HEX >= 0x030C0000
    /* static types and state: one interpreter (gevent supports no other) */
    {Py_mod_multiple_interpreters, Py_MOD_MULTIPLE_INTERPRETERS_NOT_SUPPORTED},
#endif
    {0, NULL},
};

static struct PyModuleDef fastpath_module = {
    PyModuleDef_HEAD_INIT,
    "dwebsocket.backends.default._fastpath",
    "The default backend's I/O fast path under gevent (optional; see _fastpath.c).",
    0,
    fastpath_functions,
    fastpath_slots,
    NULL,
    NULL,
    NULL,
};

PyMODINIT_FUNC
PyInit__fastpath(void)
{
    return PyModuleDef_Init(&fastpath_module);
}
