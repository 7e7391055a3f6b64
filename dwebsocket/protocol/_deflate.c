/*
 * permessage-deflate's zlib streams, called directly (optional; deflate.py's PyDeflater
 * and PyInflater, over Python's zlib module, are what runs without it):
 *
 *   Deflater(level, wbits, mem_level, strategy, no_context_takeover)
 *       compress(data), flush(mode), reset(): zlib.compressobj's calls, plus reset();
 *       a call that fails after zlib began (MemoryError: its output is lost) leaves the
 *       stream lost: zlib.error until reset(), as PyDeflater
 *   Inflater(wbits, no_context_takeover)
 *       decompress(data, max_length=0), eof, unused_data, reset(): zlib.decompressobj's
 *   set_live_limit(deflaters, inflaters) -> (old, old); live_counts() -> (d, i)
 *   compress_message(deflater, data) -> bytes: the C API's compress_message() (tests)
 *
 * deflate.py's PerMessageDeflate holds one of each per connection and is the one
 * definition of the rules (when to flush, strip the tail, reset, what an error means).
 * The same zlib library, with the same calls in the same order, gives the same bytes as
 * the zlib module (zlib is given the same output room too: OUTPUT_BLOCKS): tests/fuzz
 * compares them. The C API (_deflate.h) does the common case
 * of PerMessageDeflate.compress() and decompress() for the default backend's fast path.
 *
 * Memory: sharing the streams of idle connections. A zlib stream is large (a deflate
 * stream with 4 KiB windows and memLevel 5 is ~38 KiB, an inflate stream ~7 KiB plus its
 * window), and what it must keep between two messages is small: with context takeover,
 * the last window of data (RFC 7692 7.2.3, at most 2^wbits bytes, often much less);
 * without, nothing. So a Deflater or Inflater holds a stream only while it is "live":
 * at most `live_limit` of each kind are (per process), the most recently used; using
 * another takes a stream from the least recently used one at a message boundary, which
 * keeps only its window (deflateGetDictionary/inflateGetDictionary) and gets a stream
 * back, primed with that window (deflateSetDictionary/inflateSetDictionary), when it is
 * next used. reset() (no context takeover) gives the stream back at once. An idle
 * connection with deflate then costs its window, not its streams; a parked Deflater's
 * next message may encode differently than an unparked one would (valid either way: the
 * peer's window holds the same bytes), which is why the fuzz test compares C and
 * Python byte for byte with parking off, and round trips with it on.
 *
 * What may run Python code here: nothing but the Python-facing methods' argument parsing
 * and result allocation. The pool, zlib (its allocator is PyMem_RawMalloc/Free, which
 * never run Python), the output buffer and the C API functions run no Python
 * code and create no GC-tracked object; the types are not GC-tracked and have no Python
 * finalizer (and cannot be subclassed), so a decref of one runs none either. All of it
 * holds the GIL, which guards the pool and the output buffer: one interpreter, and not
 * free-threaded.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <limits.h>
#include <stdint.h>
#include <string.h>
#include <structmember.h>
#include <zlib.h>

#include "_deflate.h"

#define DEFAULT_LIVE_LIMIT 256 /* live streams of each kind: 256 deflate streams ~ 10 MiB */
/* zlib counts input and output in uInt: a larger input goes to it in pieces of at most
   this (and the output room is at most UINT_MAX). A test build lowers it
   (tests/protocol/test_deflate_pieces.py) to check many pieces against the zlib module
   without gigabytes of data. Not the output room: it follows the zlib module's
   (OUTPUT_BLOCKS), on which zlib's output depends. */
#ifndef DWS_ZLIB_PIECE
#define DWS_ZLIB_PIECE UINT_MAX
#endif
#define SCRATCH_KEEP (256 * 1024) /* a larger output buffer is freed at the next call */

static PyObject *zlib_error; /* zlib.error */

/* -- the output buffer -------------------------------------------------------------- */

/* One per process, guarded by the GIL like the pool: each call fills it and its caller
   copies or writes what it holds before anything can release the GIL (no Python code, no
   blocking call runs in between). Not one per thread: nothing frees a thread's own when
   the thread ends, and under runserver every connection, every request that delivers to
   a group, is a thread that ends (each kept its last call's output buffer, 4 KiB and up,
   for the life of the process). */
static uint8_t *scratch;
static Py_ssize_t scratch_cap;

/* Make scratch at least `need` bytes (keeping its content); 0, or -1 with MemoryError. */
static int
scratch_reserve(Py_ssize_t need)
{
    Py_ssize_t cap = scratch_cap ? scratch_cap : 4096;
    uint8_t *p;
    if (need <= scratch_cap) {
        return 0;
    }
    while (cap < need) {
        cap = cap > PY_SSIZE_T_MAX / 2 ? need : cap * 2;
    }
    if ((p = PyMem_RawRealloc(scratch, (size_t)cap)) == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    scratch = p;
    scratch_cap = cap;
    return 0;
}

/* At the start of a call: a large buffer left by the previous message goes. */
static void
scratch_trim(void)
{
    if (scratch_cap > SCRATCH_KEEP) {
        PyMem_RawFree(scratch);
        scratch = NULL;
        scratch_cap = 0;
    }
}

static voidpf
z_alloc(voidpf opaque, uInt items, uInt size)
{
    (void)opaque;
    return PyMem_RawCalloc(items, size);
}

static void
z_free(voidpf opaque, voidpf address)
{
    (void)opaque;
    PyMem_RawFree(address);
}

/* zlib's error as the zlib module words it (zlibmodule.c, zlib_error()): a new str, or
   NULL with MemoryError. */
static PyObject *
zlib_error_message(const z_stream *zs, int err, const char *what)
{
    const char *zmsg = err == Z_VERSION_ERROR ? "library version mismatch" : zs->msg;
    if (zmsg == NULL) {
        switch (err) {
        case Z_BUF_ERROR:
            zmsg = "incomplete or truncated stream";
            break;
        case Z_STREAM_ERROR:
            zmsg = "inconsistent stream state";
            break;
        case Z_DATA_ERROR:
            zmsg = "invalid input data";
            break;
        }
    }
    if (zmsg == NULL) {
        return PyUnicode_FromFormat("Error %d %s", err, what);
    }
    return PyUnicode_FromFormat("Error %d %s: %.200s", err, what, zmsg);
}

/* Raise zlib.error with that message. */
static void
set_zlib_error(const z_stream *zs, int err, const char *what)
{
    PyObject *message = zlib_error_message(zs, err, what);
    if (message != NULL) {
        PyErr_SetObject(zlib_error, message);
        Py_DECREF(message);
    }
}

/* -- streams and the pool ----------------------------------------------------------- */

typedef struct Stream {
    z_stream zs;
    int wbits, mem_level, level, strategy; /* what it was made with (inflate: wbits) */
    struct Stream *next_spare;
} Stream;

struct Codec;

typedef struct {
    struct Codec *head, *tail; /* live codecs, most recently used first */
    Py_ssize_t live, limit;
    Stream *spare; /* streams no codec holds, ready to be reset */
    Py_ssize_t nspare;
    int inflate;
} Pool;

/* What Deflater and Inflater share: a stream while live, else the window kept. */
typedef struct Codec {
    PyObject_HEAD
    Stream *stream;
    struct Codec *prev, *next;
    uint8_t *window; /* parked: the last bytes of the context (PyMem_Raw) */
    Py_ssize_t window_len;
    int wbits, mem_level, level, strategy;
    char no_context_takeover; /* for the C API: reset after each message */
    char pending;             /* mid-message: the stream cannot be parked */
    /* Deflater only: a call failed after zlib took its input (its output lost), so the
       context is no longer the one a peer decodes in; refuses until reset(). */
    char lost;
    /* Inflater only */
    char eof;
    PyObject *unused_data; /* bytes, never NULL once made */
    /* The outcome of a message inflate_message() did not take (see _deflate.h): the
       input, then the output or an error, the eof flag and unused data. */
    uint8_t *kept_input;
    Py_ssize_t kept_input_len;
    PyObject *kept_output; /* bytes, or NULL with kept_error */
    PyObject *kept_error;  /* str: the zlib error's message */
    char kept, kept_eof;
    PyObject *kept_unused;
} Codec;

static Pool deflate_pool = {NULL, NULL, 0, DEFAULT_LIVE_LIMIT, NULL, 0, 0};
static Pool inflate_pool = {NULL, NULL, 0, DEFAULT_LIVE_LIMIT, NULL, 0, 1};

static void
pool_unlink(Pool *pool, Codec *c)
{
    if (c->prev != NULL) {
        c->prev->next = c->next;
    }
    else {
        pool->head = c->next;
    }
    if (c->next != NULL) {
        c->next->prev = c->prev;
    }
    else {
        pool->tail = c->prev;
    }
    c->prev = c->next = NULL;
    pool->live--;
}

static void
pool_push_head(Pool *pool, Codec *c)
{
    c->prev = NULL;
    c->next = pool->head;
    if (pool->head != NULL) {
        pool->head->prev = c;
    }
    pool->head = c;
    if (pool->tail == NULL) {
        pool->tail = c;
    }
    pool->live++;
}

static void
stream_end(Pool *pool, Stream *s)
{
    if (pool->inflate) {
        inflateEnd(&s->zs);
    }
    else {
        deflateEnd(&s->zs);
    }
    PyMem_RawFree(s);
}

/* A stream no codec needs any more: kept as a spare while the pool has room, else freed. */
static void
pool_give_back(Pool *pool, Stream *s)
{
    if (pool->live + pool->nspare < pool->limit) {
        s->next_spare = pool->spare;
        pool->spare = s;
        pool->nspare++;
    }
    else {
        stream_end(pool, s);
    }
}

/* Detach c's stream, keeping its window if `keep` (at a message boundary). 0, or -1 with
   MemoryError (then c keeps its stream). */
static int
codec_park(Pool *pool, Codec *c, int keep, Stream **out)
{
    Stream *s = c->stream;
    uInt len = 0;
    uint8_t *window = NULL;

    if (keep) {
        int err = pool->inflate ? inflateGetDictionary(&s->zs, NULL, &len)
                                : deflateGetDictionary(&s->zs, NULL, &len);
        if (err != Z_OK) {
            len = 0; /* cannot happen on a healthy stream; then no context is kept */
        }
        if (len > 0) {
            if ((window = PyMem_RawMalloc(len)) == NULL) {
                PyErr_NoMemory();
                return -1;
            }
            if (pool->inflate) {
                inflateGetDictionary(&s->zs, window, &len);
            }
            else {
                deflateGetDictionary(&s->zs, window, &len);
            }
        }
    }
    PyMem_RawFree(c->window);
    c->window = window;
    c->window_len = len;
    c->stream = NULL;
    pool_unlink(pool, c);
    *out = s;
    return 0;
}

/* Make s ready for c: reset, with c's parameters. 0, or -1 with an exception (s freed). */
static int
stream_prepare(Pool *pool, Stream *s, Codec *c)
{
    int err;
    if (pool->inflate) {
        err = inflateReset2(&s->zs, -c->wbits);
    }
    else if (s->wbits == c->wbits && s->mem_level == c->mem_level) {
        err = deflateReset(&s->zs);
        if (err == Z_OK && (s->level != c->level || s->strategy != c->strategy)) {
            err = deflateParams(&s->zs, c->level, c->strategy);
        }
    }
    else {
        deflateEnd(&s->zs);
        memset(&s->zs, 0, sizeof(s->zs));
        s->zs.zalloc = z_alloc;
        s->zs.zfree = z_free;
        err = deflateInit2(&s->zs, c->level, Z_DEFLATED, -c->wbits, c->mem_level, c->strategy);
        if (err != Z_OK) {
            if (err == Z_MEM_ERROR) {
                PyErr_NoMemory();
            }
            else {
                set_zlib_error(&s->zs, err, "while creating compression object");
            }
            PyMem_RawFree(s);
            return -1;
        }
    }
    if (err != Z_OK) {
        set_zlib_error(&s->zs, err, "while resetting a stream");
        stream_end(pool, s);
        return -1;
    }
    s->wbits = c->wbits;
    s->mem_level = c->mem_level;
    s->level = c->level;
    s->strategy = c->strategy;
    return 0;
}

static Stream *
stream_new(Pool *pool, Codec *c)
{
    Stream *s = PyMem_RawCalloc(1, sizeof(Stream));
    int err;
    if (s == NULL) {
        PyErr_NoMemory();
        return NULL;
    }
    s->zs.zalloc = z_alloc;
    s->zs.zfree = z_free;
    if (pool->inflate) {
        err = inflateInit2(&s->zs, -c->wbits);
    }
    else {
        err = deflateInit2(&s->zs, c->level, Z_DEFLATED, -c->wbits, c->mem_level, c->strategy);
    }
    if (err != Z_OK) {
        if (err == Z_MEM_ERROR) {
            PyErr_NoMemory();
        }
        else {
            set_zlib_error(&s->zs, err, "while creating a stream");
        }
        PyMem_RawFree(s);
        return NULL;
    }
    s->wbits = c->wbits;
    s->mem_level = c->mem_level;
    s->level = c->level;
    s->strategy = c->strategy;
    return s;
}

/* c's stream, most recently used from now on: taken from a spare, a new one while the
   pool has room, else from the least recently used codec at a message boundary; primed
   with c's kept window. NULL with an exception. Runs no Python code. */
static z_stream *
codec_acquire(Pool *pool, Codec *c)
{
    Stream *s = NULL;
    int err;

    if (c->stream != NULL) {
        if (pool->head != c) {
            pool_unlink(pool, c);
            pool_push_head(pool, c);
        }
        return &c->stream->zs;
    }
    if (pool->spare != NULL) {
        s = pool->spare;
        pool->spare = s->next_spare;
        pool->nspare--;
        if (stream_prepare(pool, s, c) < 0) {
            return NULL;
        }
    }
    else if (pool->live >= pool->limit) {
        Codec *victim = pool->tail;
        while (victim != NULL && victim->pending) {
            victim = victim->prev;
        }
        if (victim != NULL) { /* else every live one is mid-message: one stream more */
            if (codec_park(pool, victim, 1, &s) < 0) {
                return NULL;
            }
            if (stream_prepare(pool, s, c) < 0) {
                return NULL;
            }
        }
    }
    if (s == NULL && (s = stream_new(pool, c)) == NULL) {
        return NULL;
    }
    if (c->window != NULL) {
        /* inflateSetDictionary() allocates zlib's window: failing, c keeps its own (its
           context) for the next call. */
        err = pool->inflate ? inflateSetDictionary(&s->zs, c->window, (uInt)c->window_len)
                            : deflateSetDictionary(&s->zs, c->window, (uInt)c->window_len);
        if (err != Z_OK) {
            if (err == Z_MEM_ERROR) {
                PyErr_NoMemory();
            }
            else {
                set_zlib_error(&s->zs, err, "while restoring the window");
            }
            pool_give_back(pool, s);
            return NULL;
        }
        PyMem_RawFree(c->window);
        c->window = NULL;
        c->window_len = 0;
    }
    c->stream = s;
    pool_push_head(pool, c);
    return &s->zs;
}

/* The context ends (reset(): no context takeover, or the stream ended): give the stream
   back, forget the window. */
static void
codec_release(Pool *pool, Codec *c)
{
    if (c->stream != NULL) {
        Stream *s = c->stream;
        c->stream = NULL;
        pool_unlink(pool, c);
        pool_give_back(pool, s);
    }
    PyMem_RawFree(c->window);
    c->window = NULL;
    c->window_len = 0;
    c->pending = 0;
}

static void
codec_forget_kept(Codec *c)
{
    PyMem_RawFree(c->kept_input);
    c->kept_input = NULL;
    c->kept_input_len = 0;
    Py_CLEAR(c->kept_output);
    Py_CLEAR(c->kept_error);
    Py_CLEAR(c->kept_unused);
    c->kept = 0;
}

static PyTypeObject Inflater_Type;

static void
codec_dealloc(Codec *c)
{
    Pool *pool = Py_IS_TYPE(c, &Inflater_Type) ? &inflate_pool : &deflate_pool;
    codec_release(pool, c);
    codec_forget_kept(c);
    Py_CLEAR(c->unused_data);
    Py_TYPE(c)->tp_free((PyObject *)c);
}

static int
check_wbits(int wbits)
{
    if (wbits < 9 || wbits > 15) {
        PyErr_SetString(PyExc_ValueError, "wbits must be between 9 and 15");
        return -1;
    }
    return 0;
}

/* -- Deflater ----------------------------------------------------------------------- */

static PyTypeObject Deflater_Type;

static PyObject *
Deflater_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"level", "wbits", "mem_level", "strategy", "no_context_takeover",
                             NULL};
    int level, wbits, mem_level, strategy, nct = 0;
    Codec *c;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "iiii|p:Deflater", kwlist, &level, &wbits,
                                     &mem_level, &strategy, &nct)) {
        return NULL;
    }
    if (check_wbits(wbits) < 0) {
        return NULL;
    }
    if (level < -1 || level > 9 || mem_level < 1 || mem_level > 9) {
        PyErr_SetString(PyExc_ValueError, "level must be -1 to 9 and mem_level 1 to 9");
        return NULL;
    }
    if ((c = (Codec *)type->tp_alloc(type, 0)) == NULL) {
        return NULL;
    }
    c->level = level;
    c->wbits = wbits;
    c->mem_level = mem_level;
    c->strategy = strategy;
    c->no_context_takeover = (char)nct;
    return (PyObject *)c;
}

/* The zlib module's output buffer, in which its compress() and flush() have zlib write:
   blocks of these sizes, the last one repeated (CPython's _BlocksOutputBuffer,
   pycore_blocks_output_buffer.h, BUFFER_BLOCK_SIZE, from 3.10 on). zlib's output
   depends on where the room it is given ends: a sync flush whose output ends exactly
   there gets another empty stored block (zlib's next call, made because the room is full,
   adds one), and at level 0 the stored blocks are cut to the room. So each call here
   gives zlib the same rooms, from the start of its own output, whatever scratch holds. */
static const Py_ssize_t OUTPUT_BLOCKS[] = {
    32 * 1024,        64 * 1024,        256 * 1024,       1024 * 1024,
    4 * 1024 * 1024,  8 * 1024 * 1024,  16 * 1024 * 1024, 16 * 1024 * 1024,
    32 * 1024 * 1024, 32 * 1024 * 1024, 32 * 1024 * 1024, 32 * 1024 * 1024,
    64 * 1024 * 1024, 64 * 1024 * 1024, 128 * 1024 * 1024, 128 * 1024 * 1024,
    256 * 1024 * 1024,
};
#define OUTPUT_BLOCK_COUNT ((int)(sizeof(OUTPUT_BLOCKS) / sizeof(OUTPUT_BLOCKS[0])))

/* 0, or -1 with zlib.error if `c` is lost: what it would return next could not be
   decoded in the context its earlier output built (RFC 7692 7.2.3). */
static int
deflater_lost(Codec *c)
{
    if (c->lost) {
        PyErr_SetString(zlib_error, "a compression failed part way: the stream lost its "
                                    "context (reset() starts a new one)");
        return -1;
    }
    return 0;
}

/* deflate() `data` with `flush` into scratch from offset `at`, until zlib has no more
   output for it, as the zlib module's Compress.compress() and flush() loop: the input in
   pieces of at most DWS_ZLIB_PIECE, the output in OUTPUT_BLOCKS from `at` on. The new
   end, or -1 with an exception; `c` is lost if that comes after zlib began. */
static Py_ssize_t
deflate_into_scratch(Codec *c, z_stream *zs, const uint8_t *data, Py_ssize_t n, int flush,
                     Py_ssize_t at)
{
    Py_ssize_t block_end = at; /* the end of the zlib module's current block */
    int block = 0, err;
    char began = 0; /* zlib took input or made output that the caller then loses */
    zs->next_in = (Bytef *)data;
    do {
        zs->avail_in = n > DWS_ZLIB_PIECE ? DWS_ZLIB_PIECE : (uInt)n;
        n -= zs->avail_in;
        do {
            Py_ssize_t room;
            if (at == block_end) { /* the first, or the block is full: the next one */
                Py_ssize_t size = OUTPUT_BLOCKS[block];
                if (block < OUTPUT_BLOCK_COUNT - 1) {
                    block++;
                }
                if (block_end > PY_SSIZE_T_MAX - size) {
                    PyErr_NoMemory();
                    c->lost |= began;
                    return -1;
                }
                block_end += size;
                if (scratch_reserve(block_end) < 0) {
                    c->lost |= began;
                    return -1;
                }
            }
            room = block_end - at; /* at most 256 MiB: fits a uInt */
            zs->next_out = scratch + at;
            zs->avail_out = (uInt)room;
            began = 1;
            err = deflate(zs, n > 0 ? Z_NO_FLUSH : flush);
            at += room - zs->avail_out;
            if (err == Z_STREAM_ERROR) {
                set_zlib_error(zs, err, "while compressing data");
                c->lost = 1;
                return -1;
            }
        } while (zs->avail_out == 0);
    } while (n > 0);
    return at;
}

static PyObject *
Deflater_compress(Codec *self, PyObject *arg)
{
    Py_buffer view;
    z_stream *zs;
    Py_ssize_t end;
    PyObject *r = NULL;

    if (deflater_lost(self) < 0 || PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    scratch_trim();
    if ((zs = codec_acquire(&deflate_pool, self)) != NULL) {
        self->pending = 1;
        end = deflate_into_scratch(self, zs, view.buf, view.len, Z_NO_FLUSH, 0);
        if (end >= 0 && (r = PyBytes_FromStringAndSize((const char *)scratch, end)) == NULL) {
            self->lost = 1; /* the input taken, its output lost */
        }
    }
    PyBuffer_Release(&view);
    return r;
}

static PyObject *
Deflater_flush(Codec *self, PyObject *const *args, Py_ssize_t nargs)
{
    long mode = Z_FINISH;
    z_stream *zs;
    Py_ssize_t end;
    PyObject *r;

    if (nargs > 1) {
        PyErr_SetString(PyExc_TypeError, "flush() takes at most 1 argument (mode)");
        return NULL;
    }
    if (nargs == 1 && (mode = PyLong_AsLong(args[0])) == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (deflater_lost(self) < 0) {
        return NULL;
    }
    if (mode == Z_NO_FLUSH) {
        return PyBytes_FromStringAndSize(NULL, 0);
    }
    scratch_trim();
    if ((zs = codec_acquire(&deflate_pool, self)) == NULL) {
        return NULL;
    }
    if ((end = deflate_into_scratch(self, zs, NULL, 0, (int)mode, 0)) < 0) {
        return NULL;
    }
    if ((r = PyBytes_FromStringAndSize((const char *)scratch, end)) == NULL) {
        self->lost = 1; /* the flush's output lost */
        return NULL;
    }
    if (mode == Z_FINISH) {
        codec_release(&deflate_pool, self); /* the stream is over: the next starts anew */
    }
    else if (mode == Z_SYNC_FLUSH || mode == Z_FULL_FLUSH) {
        self->pending = 0; /* at a byte boundary, nothing held back: may be parked */
    }
    return r;
}

static PyObject *
Deflater_reset(Codec *self, PyObject *Py_UNUSED(ignored))
{
    codec_release(&deflate_pool, self);
    self->lost = 0;
    Py_RETURN_NONE;
}

/* C API: PerMessageDeflate.compress(). Runs no Python code. */
static Py_ssize_t
compress_message(PyObject *obj, const uint8_t *data, Py_ssize_t n, const uint8_t **out)
{
    Codec *self = (Codec *)obj;
    z_stream *zs;
    Py_ssize_t end;

    if (deflater_lost(self) < 0) {
        return -1;
    }
    scratch_trim();
    if ((zs = codec_acquire(&deflate_pool, self)) == NULL) {
        return -1;
    }
    self->pending = 1;
    /* compress() then flush(Z_SYNC_FLUSH), as deflate.py calls them: one deflate() call
       with Z_SYNC_FLUSH may cut the blocks differently. */
    if ((end = deflate_into_scratch(self, zs, data, n, Z_NO_FLUSH, 0)) < 0) {
        return -1;
    }
    if ((end = deflate_into_scratch(self, zs, NULL, 0, Z_SYNC_FLUSH, end)) < 0) {
        self->lost = 1; /* the message taken, its output lost */
        return -1;
    }
    self->pending = 0;
    if (self->no_context_takeover) {
        codec_release(&deflate_pool, self); /* RFC 7692 7.1.1: every message anew */
    }
    *out = scratch;
    return end >= 4 ? end - 4 : 0; /* the sync flush's 00 00 ff ff (7.2.1) */
}

static PyMethodDef Deflater_methods[] = {
    {"compress", (PyCFunction)Deflater_compress, METH_O,
     "compress(data) -> bytes: as zlib's Compress.compress()."},
    {"flush", (PyCFunction)(void (*)(void))Deflater_flush, METH_FASTCALL,
     "flush(mode=Z_FINISH) -> bytes: as zlib's Compress.flush()."},
    {"reset", (PyCFunction)Deflater_reset, METH_NOARGS,
     "Forget the context: the next message is compressed from a fresh stream."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject Deflater_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "dwebsocket.protocol._deflate.Deflater",
    .tp_doc = "Deflater(level, wbits, mem_level, strategy, no_context_takeover=False): a raw "
              "deflate stream with zlib.compressobj's calls and reset() (see _deflate.c).",
    .tp_basicsize = sizeof(Codec),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = Deflater_new,
    .tp_dealloc = (destructor)codec_dealloc,
    .tp_methods = Deflater_methods,
};

/* -- Inflater ----------------------------------------------------------------------- */

static PyObject *
Inflater_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"wbits", "no_context_takeover", NULL};
    int wbits, nct = 0;
    Codec *c;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "i|p:Inflater", kwlist, &wbits, &nct)) {
        return NULL;
    }
    if (check_wbits(wbits) < 0) {
        return NULL;
    }
    if ((c = (Codec *)type->tp_alloc(type, 0)) == NULL) {
        return NULL;
    }
    c->wbits = wbits;
    c->no_context_takeover = (char)nct;
    if ((c->unused_data = PyBytes_FromStringAndSize(NULL, 0)) == NULL) {
        Py_DECREF(c);
        return NULL;
    }
    return (PyObject *)c;
}

/* inflate() `data` into scratch, at most `limit` bytes of output (as the zlib module's
   Decompress.decompress(data, limit)). Returns zlib's last code; *produced, *rest (input
   not consumed) set. Z_MEM_ERROR-like failures of the buffer: -100 with MemoryError. */
static int
inflate_into_scratch(z_stream *zs, const uint8_t *data, Py_ssize_t n, Py_ssize_t limit,
                     Py_ssize_t *produced, Py_ssize_t *rest)
{
    Py_ssize_t at = 0, left = n;
    int err = Z_OK;

    zs->next_in = (Bytef *)data;
    do {
        zs->avail_in = left > DWS_ZLIB_PIECE ? DWS_ZLIB_PIECE : (uInt)left;
        left -= zs->avail_in;
        do {
            Py_ssize_t room;
            if (at >= limit) {
                goto done; /* the output limit: the rest stays unconsumed */
            }
            if (at == scratch_cap) {
                Py_ssize_t want = 4096;
                if (scratch_cap) {
                    want = scratch_cap > PY_SSIZE_T_MAX / 2 ? PY_SSIZE_T_MAX : scratch_cap * 2;
                }
                if (want > limit) {
                    want = limit;
                }
                if (scratch_reserve(want) < 0) {
                    return -100;
                }
            }
            room = (scratch_cap < limit ? scratch_cap : limit) - at;
            if (room > UINT_MAX) {
                room = UINT_MAX;
            }
            zs->next_out = scratch + at;
            zs->avail_out = (uInt)room;
            err = inflate(zs, Z_SYNC_FLUSH);
            at += room - zs->avail_out;
            if (err != Z_OK && err != Z_BUF_ERROR && err != Z_STREAM_END) {
                goto done;
            }
        } while (zs->avail_out == 0);
    } while (err != Z_STREAM_END && left > 0);
done:
    *produced = at;
    *rest = (Py_ssize_t)zs->avail_in + left;
    return err;
}

static int
inflate_failed(int err)
{
    return err != Z_OK && err != Z_BUF_ERROR && err != Z_STREAM_END;
}

/* After an inflate of `data` ending at *rest: the eof flag and unused data, and whether
   the stream may be parked: all input taken, and zlib between two blocks with no bit
   left over (data_type 128: mode TYPE, not the last block, not inside a stored block),
   which is where a sync flush's empty block leaves it. Only the window is kept then;
   anywhere else (a peer's odd bytes may leave a block half read) the stream stays. */
static int
inflate_settle(Codec *self, z_stream *zs, int err, const uint8_t *data, Py_ssize_t n,
               Py_ssize_t rest, int capped)
{
    if (err == Z_STREAM_END) {
        PyObject *unused = PyBytes_FromStringAndSize((const char *)data + n - rest, rest);
        if (unused == NULL) {
            return -1;
        }
        Py_SETREF(self->unused_data, unused);
        self->eof = 1;
        self->pending = 1; /* ended: only reset() makes it usable */
        return 0;
    }
    self->pending = capped || rest != 0 || zs->data_type != 128;
    return 0;
}

static PyObject *
Inflater_decompress(Codec *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"data", "max_length", NULL};
    Py_buffer view;
    Py_ssize_t max_length = 0, produced, rest, limit;
    z_stream *zs;
    PyObject *r = NULL;
    int err;

    if (!PyArg_ParseTupleAndKeywords(args, kwds, "y*|n:decompress", kwlist, &view,
                                     &max_length)) {
        return NULL;
    }
    if (max_length < 0) {
        PyErr_SetString(PyExc_ValueError, "max_length must be non-negative");
        goto out;
    }
    if (self->kept) {
        /* The fast path's outcome for this message (_deflate.h, inflate_message()). */
        int same = view.len == self->kept_input_len &&
                   memcmp(view.buf, self->kept_input, (size_t)view.len) == 0;
        if (same) {
            self->eof = self->kept_eof;
            if (self->kept_unused != NULL) {
                Py_SETREF(self->unused_data, Py_NewRef(self->kept_unused));
            }
            if (self->kept_error != NULL) {
                PyErr_SetObject(zlib_error, self->kept_error);
            }
            else {
                r = Py_NewRef(self->kept_output);
            }
            codec_forget_kept(self);
            goto out;
        }
        codec_forget_kept(self); /* cannot happen: the caller's next message is that one */
        PyErr_SetString(zlib_error, "Error -2 while decompressing data: stream out of order");
        goto out;
    }
    if (self->eof) {
        /* As zlib after the end of the stream: everything is unused data. */
        PyObject *unused = PyBytes_FromStringAndSize(NULL, PyBytes_GET_SIZE(self->unused_data) +
                                                               view.len);
        if (unused == NULL) {
            goto out;
        }
        memcpy(PyBytes_AS_STRING(unused), PyBytes_AS_STRING(self->unused_data),
               (size_t)PyBytes_GET_SIZE(self->unused_data));
        memcpy(PyBytes_AS_STRING(unused) + PyBytes_GET_SIZE(self->unused_data), view.buf,
               (size_t)view.len);
        Py_SETREF(self->unused_data, unused);
        r = PyBytes_FromStringAndSize(NULL, 0);
        goto out;
    }
    scratch_trim();
    if ((zs = codec_acquire(&inflate_pool, self)) == NULL) {
        goto out;
    }
    self->pending = 1; /* until inflate_settle(): a failure may leave zlib anywhere */
    limit = max_length == 0 ? PY_SSIZE_T_MAX : max_length;
    err = inflate_into_scratch(zs, view.buf, view.len, limit, &produced, &rest);
    if (err == -100) {
        goto out;
    }
    if (inflate_failed(err)) {
        self->pending = 1;
        set_zlib_error(zs, err, "while decompressing data");
        goto out;
    }
    if (inflate_settle(self, zs, err, view.buf, view.len, rest, produced >= limit) < 0) {
        goto out;
    }
    r = PyBytes_FromStringAndSize((const char *)scratch, produced);
out:
    PyBuffer_Release(&view);
    return r;
}

static PyObject *
Inflater_reset(Codec *self, PyObject *Py_UNUSED(ignored))
{
    PyObject *empty = PyBytes_FromStringAndSize(NULL, 0);
    if (empty == NULL) {
        return NULL;
    }
    codec_release(&inflate_pool, self);
    codec_forget_kept(self);
    Py_SETREF(self->unused_data, empty);
    self->eof = 0;
    Py_RETURN_NONE;
}

static PyObject *
Inflater_get_eof(Codec *self, void *Py_UNUSED(closure))
{
    return PyBool_FromLong(self->eof);
}

static PyObject *
Inflater_get_unused_data(Codec *self, void *Py_UNUSED(closure))
{
    return Py_NewRef(self->unused_data);
}

/* Keep the outcome of a message for Python's decompress() call (see _deflate.h). The
   output is a bytes object (not GC-tracked: no Python code runs). 0, or -1. */
static int
keep(Codec *self, const uint8_t *input, Py_ssize_t n, const uint8_t *output,
     Py_ssize_t out_len, PyObject *error, int eof, PyObject *unused)
{
    codec_forget_kept(self);
    if ((self->kept_input = PyMem_RawMalloc(n > 0 ? (size_t)n : 1)) == NULL) {
        Py_XDECREF(error);
        Py_XDECREF(unused);
        PyErr_NoMemory();
        return -1;
    }
    memcpy(self->kept_input, input, (size_t)n);
    self->kept_input_len = n;
    self->kept_error = error;
    self->kept_unused = unused;
    self->kept_eof = (char)eof;
    if (error == NULL &&
        (self->kept_output = PyBytes_FromStringAndSize((const char *)output, out_len)) == NULL) {
        codec_forget_kept(self);
        return -1;
    }
    self->kept = 1;
    return 0;
}

/* C API: PerMessageDeflate.decompress() of one whole message (see _deflate.h). Runs no
   Python code: on anything else than the common case the stream is left as the zlib
   call left it (pending), the outcome kept, and the eof flag and unused data are set
   only when Python's decompress() takes that outcome. */
static int
inflate_message(PyObject *obj, const uint8_t *data, Py_ssize_t n, Py_ssize_t max_size,
                const uint8_t **out, Py_ssize_t *out_len)
{
    Codec *self = (Codec *)obj;
    Py_ssize_t produced, rest, limit;
    z_stream *zs;
    int err;

    if (self->eof || self->kept) {
        return 0; /* untouched: Python's decompress() takes the message as it comes */
    }
    scratch_trim();
    if ((zs = codec_acquire(&inflate_pool, self)) == NULL) {
        return -1;
    }
    self->pending = 1; /* until inflate_settle(): a failure may leave zlib anywhere */
    limit = max_size >= PY_SSIZE_T_MAX - 1 ? PY_SSIZE_T_MAX : max_size + 1;
    err = inflate_into_scratch(zs, data, n, limit, &produced, &rest);
    if (err == -100) {
        return -1;
    }
    if (inflate_failed(err)) {
        /* The message the zlib module would raise, made now (a str: not GC-tracked). It
           is not read back from a raised exception: Python 3.12 and later keep only the
           exception object, not the str it was set with. */
        PyObject *message = zlib_error_message(zs, err, "while decompressing data");
        if (message == NULL) {
            return -1;
        }
        self->pending = 1;
        return keep(self, data, n, NULL, 0, message, 0, NULL) < 0 ? -1 : 0;
    }
    if (err == Z_STREAM_END) {
        PyObject *unused = PyBytes_FromStringAndSize((const char *)data + n - rest, rest);
        if (unused == NULL) {
            return -1;
        }
        self->pending = 1;
        return keep(self, data, n, scratch, produced, NULL, 1, unused) < 0 ? -1 : 0;
    }
    if (produced > max_size) {
        self->pending = 1;
        return keep(self, data, n, scratch, produced, NULL, 0, NULL) < 0 ? -1 : 0;
    }
    if (inflate_settle(self, zs, err, data, n, rest, 0) < 0) {
        return -1;
    }
    if (self->no_context_takeover) {
        codec_release(&inflate_pool, self); /* deflate.py: "elif fin and nct" */
    }
    *out = scratch;
    *out_len = produced;
    return 1;
}

static int
keep_outcome(PyObject *obj, const uint8_t *data, Py_ssize_t n, const uint8_t *output,
             Py_ssize_t out_len)
{
    return keep((Codec *)obj, data, n, output, out_len, NULL, 0, NULL);
}

static PyMethodDef Inflater_methods[] = {
    {"decompress", (PyCFunction)(void (*)(void))Inflater_decompress,
     METH_VARARGS | METH_KEYWORDS,
     "decompress(data, max_length=0) -> bytes: as zlib's Decompress.decompress()."},
    {"reset", (PyCFunction)Inflater_reset, METH_NOARGS,
     "Forget the context and the end of the stream: the next message starts anew."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Inflater_getset[] = {
    {"eof", (getter)Inflater_get_eof, NULL, "True once the peer ended the deflate stream.",
     NULL},
    {"unused_data", (getter)Inflater_get_unused_data, NULL,
     "Bytes after the end of the deflate stream.", NULL},
    {NULL},
};

static PyTypeObject Inflater_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "dwebsocket.protocol._deflate.Inflater",
    .tp_doc = "Inflater(wbits, no_context_takeover=False): a raw inflate stream with "
              "zlib.decompressobj's calls and reset() (see _deflate.c).",
    .tp_basicsize = sizeof(Codec),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = Inflater_new,
    .tp_dealloc = (destructor)codec_dealloc,
    .tp_methods = Inflater_methods,
    .tp_getset = Inflater_getset,
};

/* -- the module --------------------------------------------------------------------- */

static void
pool_trim(Pool *pool)
{
    /* Over a lowered limit: park the least recently used (at a boundary), drop spares. */
    while (pool->spare != NULL && pool->live + pool->nspare > pool->limit) {
        Stream *s = pool->spare;
        pool->spare = s->next_spare;
        pool->nspare--;
        stream_end(pool, s);
    }
    while (pool->live > pool->limit) {
        Codec *victim = pool->tail;
        Stream *s;
        while (victim != NULL && victim->pending) {
            victim = victim->prev;
        }
        if (victim == NULL || codec_park(pool, victim, 1, &s) < 0) {
            PyErr_Clear();
            return;
        }
        stream_end(pool, s);
    }
}

static PyObject *
set_live_limit(PyObject *module, PyObject *args)
{
    Py_ssize_t deflaters, inflaters;
    PyObject *old;
    if (!PyArg_ParseTuple(args, "nn:set_live_limit", &deflaters, &inflaters)) {
        return NULL;
    }
    if (deflaters < 1 || inflaters < 1) {
        PyErr_SetString(PyExc_ValueError, "the limits must be at least 1");
        return NULL;
    }
    old = Py_BuildValue("(nn)", deflate_pool.limit, inflate_pool.limit);
    if (old == NULL) {
        return NULL;
    }
    deflate_pool.limit = deflaters;
    inflate_pool.limit = inflaters;
    pool_trim(&deflate_pool);
    pool_trim(&inflate_pool);
    return old;
}

static PyObject *
live_counts(PyObject *module, PyObject *Py_UNUSED(ignored))
{
    return Py_BuildValue("(nn)", deflate_pool.live, inflate_pool.live);
}

/* compress_message(deflater, data) -> bytes: the C API's compress_message() for Python,
   for tests/fuzz to compare the fast path's send with PerMessageDeflate.compress(). */
static PyObject *
compress_message_py(PyObject *module, PyObject *args)
{
    Py_buffer view;
    PyObject *deflater;
    const uint8_t *out;
    Py_ssize_t n;
    if (!PyArg_ParseTuple(args, "O!y*:compress_message", &Deflater_Type, &deflater, &view)) {
        return NULL;
    }
    n = compress_message(deflater, view.buf, view.len, &out);
    PyBuffer_Release(&view);
    return n < 0 ? NULL : PyBytes_FromStringAndSize((const char *)out, n);
}

static DwsDeflateCAPI deflate_capi = {NULL, NULL, compress_message, inflate_message,
                                      keep_outcome};

static int
deflate_exec(PyObject *module)
{
    PyObject *capsule;
    if (zlib_error == NULL) {
        PyObject *zlib = PyImport_ImportModule("zlib");
        if (zlib == NULL) {
            return -1;
        }
        zlib_error = PyObject_GetAttrString(zlib, "error");
        Py_DECREF(zlib);
        if (zlib_error == NULL) {
            return -1;
        }
    }
    if (PyType_Ready(&Deflater_Type) < 0 || PyType_Ready(&Inflater_Type) < 0) {
        return -1;
    }
    if (PyModule_AddObjectRef(module, "Deflater", (PyObject *)&Deflater_Type) < 0 ||
        PyModule_AddObjectRef(module, "Inflater", (PyObject *)&Inflater_Type) < 0 ||
        PyModule_AddStringConstant(module, "ZLIB_VERSION", ZLIB_VERSION) < 0 ||
        PyModule_AddIntConstant(module, "DEFAULT_LIVE_LIMIT", DEFAULT_LIVE_LIMIT) < 0) {
        return -1;
    }
    deflate_capi.deflater_type = &Deflater_Type;
    deflate_capi.inflater_type = &Inflater_Type;
    capsule = PyCapsule_New((void *)&deflate_capi, DWS_DEFLATE_CAPSULE, NULL);
    if (capsule == NULL) {
        return -1;
    }
    if (PyModule_AddObject(module, DWS_DEFLATE_CAPSULE_ATTR, capsule) < 0) {
        Py_DECREF(capsule);
        return -1;
    }
    return 0;
}

static PyMethodDef deflate_methods[] = {
    {"set_live_limit", (PyCFunction)set_live_limit, METH_VARARGS,
     "set_live_limit(deflaters, inflaters) -> the old (deflaters, inflaters): how many "
     "streams of each kind stay attached to their codec (see _deflate.c)."},
    {"live_counts", (PyCFunction)live_counts, METH_NOARGS,
     "live_counts() -> (deflaters, inflaters) holding a stream now."},
    {"compress_message", (PyCFunction)compress_message_py, METH_VARARGS,
     "compress_message(deflater, data) -> bytes: the fast path's compression of one "
     "message (the C API's), for tests."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef_Slot deflate_slots[] = {
    {Py_mod_exec, deflate_exec},
#if PY_VERSION_HEX >= 0x030C0000
    /* one pool per process, guarded by the GIL */
    {Py_mod_multiple_interpreters, Py_MOD_MULTIPLE_INTERPRETERS_NOT_SUPPORTED},
#endif
    {0, NULL},
};

static struct PyModuleDef deflate_module = {
    PyModuleDef_HEAD_INIT,
    "dwebsocket.protocol._deflate",
    "permessage-deflate's zlib streams in C (optional; see _deflate.c).",
    0,
    deflate_methods,
    deflate_slots,
    NULL,
    NULL,
    NULL,
};

PyMODINIT_FUNC
PyInit__deflate(void)
{
    return PyModuleDef_Init(&deflate_module);
}
