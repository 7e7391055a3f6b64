/*
 * WebSocket load generator for bench/servers.py: one thread, epoll, pre-masked frames.
 *
 *   loadgen --mode echo --port P [--conns N] [--size B] [--binary] [--deflate] ...
 *   loadgen --mode idle --port P --steps 10000,50000 ...   (driven over stdin/stdout)
 *
 * echo: opens N connections, then each connection sends one message and waits for the
 * whole reply before sending the next (pipelining depth 1). Replies received between
 * the end of the warmup and the end of the run are counted, and their round-trip
 * latency goes into a log-linear histogram (<1% error). Prints {"event":"measure-start"}
 * and {"event":"measure-end"} as the counted window opens and closes (for whoever samples
 * the server meanwhile), then the result as one JSON object.
 *
 * idle: opens connections step by step (the --steps totals); after each step prints
 * {"event":"opened",...} and waits for a line on stdin: "probe" sends one 32-byte text
 * message on every open connection and reports how many answered ({"event":"probed"}),
 * "next" goes on to the next step, "quit" exits. Server pings are answered meanwhile.
 * With --deflate the probe is compressed where negotiated, as a browser's would be.
 * "broadcast" prints {"event":"listening"} at once, then waits for one message the
 * client did not ask for on every open connection (a group message the server pushes)
 * and reports how many had one, with the CLOCK_MONOTONIC seconds of the first and last
 * arrival ({"event":"broadcast"}); whoever triggers the push does so after "listening".
 *
 * Every frame the client sends is built once, masked once (RFC 6455 5.3 asks for
 * unpredictable keys to protect proxies' caches; a benchmark on loopback needs none),
 * and written as is. Replies are parsed for their headers only: payloads are counted
 * and skipped, never copied. With --deflate the handshake offers permessage-deflate;
 * where the server accepts, the client sends a pre-compressed message (a raw DEFLATE
 * block that refers to nothing outside itself is valid with or without context
 * takeover, RFC 7692 7.2.1) and does not inflate replies.
 *
 * Source addresses (--src 127.0.0.1,127.0.0.2,...) are used round-robin, each with
 * IP_BIND_ADDRESS_NO_PORT, so that more than one ephemeral port range is available.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <zlib.h>

#ifndef IP_BIND_ADDRESS_NO_PORT
#define IP_BIND_ADDRESS_NO_PORT 24
#endif

enum { ST_FREE, ST_CONNECTING, ST_HANDSHAKE, ST_OPEN, ST_DEAD };

#define CARRY 160 /* a partial header (<= 14 bytes) or a whole control frame (<= 139) */
#define HS_MAX 2048

typedef struct {
    int fd;
    uint8_t state;
    uint8_t deflate;     /* permessage-deflate negotiated */
    uint8_t awaiting;    /* a message is out, its reply not complete yet */
    uint8_t in_payload;  /* skipping the payload of a data frame */
    uint8_t payload_fin; /* ... which is the final frame of its message */
    uint8_t want_out;    /* EPOLLOUT registered */
    uint8_t got_push;    /* had the message "broadcast" waits for */
    uint16_t carry_len;
    uint64_t skip;        /* payload bytes of the current data frame still to come */
    uint64_t reply_bytes; /* payload bytes of the current reply so far */
    uint64_t sent_at;     /* ns, CLOCK_MONOTONIC */
    uint8_t *out;         /* unwritten bytes (only after a partial write) */
    size_t out_len, out_cap;
    char *hs; /* handshake response being read */
    uint16_t hs_len;
    uint8_t carry[CARRY];
} conn_t;

/* -- options --------------------------------------------------------------------- */

static const char *opt_mode = "echo";
static const char *opt_host = "127.0.0.1";
static int opt_port = 0;
static const char *opt_path = "/";
static long opt_conns = 1;
static long opt_steps[16];
static int opt_nsteps = 0;
static long opt_size = 32;
static int opt_binary = 0;
static int opt_deflate = 0;
static const char *opt_payload_file = NULL;
static double opt_duration = 5.0;
static double opt_warmup = 1.0;
static char *opt_src = NULL;
static int opt_connect_concurrency = 256;
static double opt_connect_timeout = 60.0;
static double opt_probe_timeout = 60.0;

/* -- state ----------------------------------------------------------------------- */

static conn_t *conns;
static long nconns_alloc;
static long nconns_started; /* conns[0 .. nconns_started) have been used */
static long n_open, n_failed, n_pending, n_dropped, n_bad_replies;
static int epfd;
static struct sockaddr_in server_addr;
static struct sockaddr_in src_addrs[64];
static int n_src = 0;
static char first_error[256] = "";
static char handshake_req[1024];
static size_t handshake_len;

static uint8_t *frame_plain, *frame_deflate, *frame_probe, *frame_probe_deflate;
static size_t frame_plain_len, frame_deflate_len, frame_probe_len, frame_probe_deflate_len;
static size_t payload_len;
static long n_deflate;

/* measuring */
static int measuring = 0, sending = 0, closing = 0;
static uint64_t meas_start, meas_end;
static uint64_t n_msgs, n_bytes;
#define SUB_BITS 7
#define SUB (1 << SUB_BITS)
static uint64_t hist[64 * SUB];
static uint64_t n_answered; /* idle probe */
static int push_waiting;    /* idle broadcast: count unsolicited messages */
static uint64_t n_pushed, push_first, push_last;

static uint8_t rbuf[CARRY + 262144];

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static double cpu_seconds(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + ru.ru_stime.tv_sec +
           ru.ru_stime.tv_usec / 1e6;
}

static void die(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "loadgen: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    exit(2);
}

static void note_error(const char *fmt, ...) {
    if (first_error[0])
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(first_error, sizeof first_error, fmt, ap);
    va_end(ap);
    for (char *p = first_error; *p; p++)
        if (*p == '"' || *p == '\\' || *p == '\r' || *p == '\n')
            *p = ' ';
}

/* -- latency histogram (log-linear, 128 sub-buckets per power of two) -------------- */

static int hist_index(uint64_t v) {
    if (v < SUB)
        return (int)v;
    int e = 63 - __builtin_clzll(v);
    return (e - SUB_BITS + 1) * SUB + (int)((v >> (e - SUB_BITS)) - SUB);
}

static double hist_value(int i) {
    if (i < SUB)
        return i;
    int k = i / SUB, e = k + SUB_BITS - 1;
    uint64_t m = (uint64_t)(i % SUB + SUB);
    double lo = (double)(m << (e - SUB_BITS)), width = (double)(1ull << (e - SUB_BITS));
    return lo + width / 2;
}

static double percentile(double p) {
    uint64_t total = 0;
    for (int i = 0; i < 64 * SUB; i++)
        total += hist[i];
    if (!total)
        return -1;
    uint64_t rank = (uint64_t)(p / 100.0 * (double)total);
    if (rank >= total)
        rank = total - 1;
    uint64_t seen = 0;
    for (int i = 0; i < 64 * SUB; i++) {
        seen += hist[i];
        if (seen > rank)
            return hist_value(i);
    }
    return -1;
}

/* -- frames ---------------------------------------------------------------------- */

static const uint8_t MASK_KEY[4] = {0x37, 0xfa, 0x21, 0x3d};
static const uint8_t ZERO_KEY[4] = {0, 0, 0, 0};

/* A masked client frame: b0 (FIN|RSV|opcode), then the payload masked with key. */
static uint8_t *build_frame(uint8_t b0, const uint8_t *payload, size_t n, const uint8_t *key,
                            size_t *out_len) {
    uint8_t *f = malloc(n + 14);
    size_t h = 0;
    f[h++] = b0;
    if (n < 126) {
        f[h++] = 0x80 | (uint8_t)n;
    } else if (n < 65536) {
        f[h++] = 0x80 | 126;
        f[h++] = (uint8_t)(n >> 8);
        f[h++] = (uint8_t)n;
    } else {
        f[h++] = 0x80 | 127;
        for (int i = 7; i >= 0; i--)
            f[h++] = (uint8_t)((uint64_t)n >> (8 * i));
    }
    memcpy(f + h, key, 4);
    h += 4;
    for (size_t i = 0; i < n; i++)
        f[h + i] = payload[i] ^ key[i & 3];
    *out_len = h + n;
    return f;
}

/* RFC 7692 7.2.1: compress, flush with Z_SYNC_FLUSH, drop the trailing 00 00 ff ff. */
static uint8_t *deflate_message(const uint8_t *data, size_t n, size_t *out_len) {
    z_stream z;
    memset(&z, 0, sizeof z);
    if (deflateInit2(&z, Z_DEFAULT_COMPRESSION, Z_DEFLATED, -15, 8, Z_DEFAULT_STRATEGY) != Z_OK)
        die("deflateInit2 failed");
    size_t cap = deflateBound(&z, n) + 16;
    uint8_t *out = malloc(cap);
    z.next_in = (Bytef *)data;
    z.avail_in = (uInt)n;
    z.next_out = out;
    z.avail_out = (uInt)cap;
    if (deflate(&z, Z_SYNC_FLUSH) != Z_OK)
        die("deflate failed");
    size_t len = cap - z.avail_out;
    deflateEnd(&z);
    if (len >= 4 && !memcmp(out + len - 4, "\x00\x00\xff\xff", 4))
        len -= 4;
    *out_len = len;
    return out;
}

static void build_payloads(void) {
    uint8_t *payload;
    if (opt_payload_file) {
        FILE *f = fopen(opt_payload_file, "rb");
        if (!f)
            die("cannot open %s", opt_payload_file);
        fseek(f, 0, SEEK_END);
        long n = ftell(f);
        fseek(f, 0, SEEK_SET);
        payload = malloc(n > 0 ? n : 1);
        if (n > 0 && fread(payload, 1, n, f) != (size_t)n)
            die("cannot read %s", opt_payload_file);
        fclose(f);
        payload_len = (size_t)n;
    } else {
        payload_len = (size_t)opt_size;
        payload = malloc(payload_len ? payload_len : 1);
        uint32_t x = 2463534242u; /* xorshift: incompressible binary, printable text */
        const char *alphabet = "abcdefghijklmnopqrstuvwxyz0123456789";
        for (size_t i = 0; i < payload_len; i++) {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            payload[i] = opt_binary ? (uint8_t)x : (uint8_t)alphabet[x % 36];
        }
    }
    uint8_t opcode = opt_binary ? 0x2 : 0x1;
    frame_plain = build_frame(0x80 | opcode, payload, payload_len, MASK_KEY, &frame_plain_len);
    size_t clen;
    uint8_t *compressed = deflate_message(payload, payload_len, &clen);
    frame_deflate = build_frame(0xC0 | opcode, compressed, clen, MASK_KEY, &frame_deflate_len);
    free(compressed);
    free(payload);
    const char *probe = "probe-0123456789abcdefghijklmnop"; /* 32 bytes */
    frame_probe = build_frame(0x81, (const uint8_t *)probe, 32, MASK_KEY, &frame_probe_len);
    compressed = deflate_message((const uint8_t *)probe, 32, &clen);
    frame_probe_deflate = build_frame(0xC1, compressed, clen, MASK_KEY, &frame_probe_deflate_len);
    free(compressed);
}

/* -- connections ------------------------------------------------------------------- */

static void set_events(conn_t *c, long idx, int want_out) {
    if (c->want_out == want_out)
        return;
    struct epoll_event ev = {.events = EPOLLIN | (want_out ? EPOLLOUT : 0), .data.u64 = (uint64_t)idx};
    epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev);
    c->want_out = (uint8_t)want_out;
}

static void conn_kill(conn_t *c, int was_open) {
    if (c->state == ST_DEAD)
        return;
    if (c->state == ST_CONNECTING || c->state == ST_HANDSHAKE) {
        n_pending--;
        n_failed++;
    } else if (was_open) {
        n_open--;
        n_dropped++;
        if (c->deflate)
            n_deflate--;
    }
    c->state = ST_DEAD;
    epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    free(c->out);
    c->out = NULL;
    c->out_len = c->out_cap = 0;
    free(c->hs);
    c->hs = NULL;
}

/* Write data now, queueing what the kernel does not take. */
static void conn_write(conn_t *c, long idx, const uint8_t *data, size_t n) {
    size_t done = 0;
    if (!c->out_len) {
        ssize_t w = write(c->fd, data, n);
        if (w < 0) {
            if (errno != EAGAIN && errno != EWOULDBLOCK) {
                note_error("write: %s", strerror(errno));
                conn_kill(c, c->state == ST_OPEN);
                return;
            }
            w = 0;
        }
        done = (size_t)w;
        if (done == n)
            return;
    }
    size_t rest = n - done;
    if (c->out_len + rest > c->out_cap) {
        c->out_cap = (c->out_len + rest) * 2;
        c->out = realloc(c->out, c->out_cap);
    }
    memcpy(c->out + c->out_len, data + done, rest);
    c->out_len += rest;
    set_events(c, idx, 1);
}

static void conn_flush(conn_t *c, long idx) {
    ssize_t w = write(c->fd, c->out, c->out_len);
    if (w < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            return;
        note_error("write: %s", strerror(errno));
        conn_kill(c, c->state == ST_OPEN);
        return;
    }
    memmove(c->out, c->out + w, c->out_len - (size_t)w);
    c->out_len -= (size_t)w;
    if (!c->out_len)
        set_events(c, idx, 0);
}

static void send_message(conn_t *c, long idx) {
    c->awaiting = 1;
    c->reply_bytes = 0;
    c->sent_at = now_ns();
    if (c->deflate)
        conn_write(c, idx, frame_deflate, frame_deflate_len);
    else
        conn_write(c, idx, frame_plain, frame_plain_len);
}

static int start_connection(void) {
    if (nconns_started >= nconns_alloc)
        return -1;
    long idx = nconns_started++;
    conn_t *c = &conns[idx];
    memset(c, 0, sizeof *c);
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0) {
        note_error("socket: %s", strerror(errno));
        c->state = ST_DEAD;
        n_failed++;
        return 0;
    }
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (n_src) {
        setsockopt(c->fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
        struct sockaddr_in *src = &src_addrs[idx % n_src];
        if (bind(c->fd, (struct sockaddr *)src, sizeof *src) < 0) {
            note_error("bind %s: %s", inet_ntoa(src->sin_addr), strerror(errno));
            close(c->fd);
            c->state = ST_DEAD;
            n_failed++;
            return 0;
        }
    }
    c->state = ST_CONNECTING;
    n_pending++;
    c->want_out = 1;
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.u64 = (uint64_t)idx};
    if (epoll_ctl(epfd, EPOLL_CTL_ADD, c->fd, &ev) < 0)
        die("epoll_ctl: %s", strerror(errno));
    if (connect(c->fd, (struct sockaddr *)&server_addr, sizeof server_addr) < 0 &&
        errno != EINPROGRESS) {
        note_error("connect: %s", strerror(errno));
        conn_kill(c, 0);
    }
    return 0;
}

static void on_reply(conn_t *c, long idx, uint64_t t) {
    if (!c->awaiting) { /* unsolicited message: a broadcast's, or not ours to count */
        if (push_waiting && !c->got_push) {
            c->got_push = 1;
            n_pushed++;
            if (!push_first)
                push_first = t;
            push_last = t;
            return;
        }
        n_bad_replies++;
        return;
    }
    c->awaiting = 0;
    if (!c->deflate && c->reply_bytes != payload_len && !strcmp(opt_mode, "echo"))
        n_bad_replies++;
    if (measuring && t >= meas_start && t < meas_end) {
        n_msgs++;
        n_bytes += payload_len;
        hist[hist_index((t - c->sent_at) / 1000)]++;
    }
    if (!strcmp(opt_mode, "idle")) {
        n_answered++;
        hist[hist_index((t - c->sent_at) / 1000)]++;
        return;
    }
    if (sending && t < meas_end)
        send_message(c, idx);
}

/* Parse frames in buf[0..n); return how many bytes were consumed. */
static size_t parse_frames(conn_t *c, long idx, uint8_t *buf, size_t n) {
    size_t pos = 0;
    uint64_t t = 0;
    while (c->state == ST_OPEN) {
        if (c->in_payload) {
            uint64_t take = n - pos < c->skip ? n - pos : c->skip;
            c->skip -= take;
            pos += take;
            if (c->skip)
                break;
            c->in_payload = 0;
            if (c->payload_fin) {
                if (!t)
                    t = now_ns();
                on_reply(c, idx, t);
            }
            continue;
        }
        if (n - pos < 2)
            break;
        uint8_t b0 = buf[pos], b1 = buf[pos + 1];
        uint64_t len = b1 & 0x7f;
        size_t h = 2;
        if (len == 126) {
            if (n - pos < 4)
                break;
            len = ((uint64_t)buf[pos + 2] << 8) | buf[pos + 3];
            h = 4;
        } else if (len == 127) {
            if (n - pos < 10)
                break;
            len = 0;
            for (int i = 0; i < 8; i++)
                len = (len << 8) | buf[pos + 2 + i];
            h = 10;
        }
        if (b1 & 0x80)
            h += 4; /* a masked frame from a server is wrong, but not our concern */
        uint8_t opcode = b0 & 0x0f;
        if (opcode >= 8) {
            if (n - pos < h + len)
                break;
            const uint8_t *payload = buf + pos + h;
            if (opcode == 0x9) { /* ping: pong with the same payload, zero mask key */
                size_t flen;
                uint8_t *pong = build_frame(0x8A, payload, (size_t)len, ZERO_KEY, &flen);
                conn_write(c, idx, pong, flen);
                free(pong);
            } else if (opcode == 0x8) {
                if (closing) { /* the reply to ours */
                    c->state = ST_DEAD;
                    n_open--;
                    epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
                    close(c->fd);
                    return n;
                }
                note_error("server closed the connection (close frame, code %d)",
                           len >= 2 ? (payload[0] << 8) | payload[1] : 1005);
                uint8_t close_frame[8] = {0x88, 0x82, 0, 0, 0, 0, 0x03, 0xe8};
                if (write(c->fd, close_frame, sizeof close_frame) < 0) { /* best effort */
                }
                conn_kill(c, 1);
                return n;
            }
            pos += h + len;
            continue;
        }
        pos += h;
        c->reply_bytes += len;
        c->skip = len;
        c->in_payload = 1;
        c->payload_fin = (b0 & 0x80) != 0;
    }
    return pos;
}

static void on_handshake_data(conn_t *c, long idx) {
    if (!c->hs)
        c->hs = malloc(HS_MAX + 1);
    ssize_t r = read(c->fd, c->hs + c->hs_len, HS_MAX - c->hs_len);
    if (r <= 0) {
        if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return;
        note_error("handshake: %s", r ? strerror(errno) : "connection closed by the server");
        conn_kill(c, 0);
        return;
    }
    c->hs_len += (uint16_t)r;
    c->hs[c->hs_len] = 0;
    char *end = strstr(c->hs, "\r\n\r\n");
    if (!end) {
        if (c->hs_len >= HS_MAX) {
            note_error("handshake: response head too long");
            conn_kill(c, 0);
        }
        return;
    }
    if (strncmp(c->hs, "HTTP/1.1 101", 12) != 0) {
        char *eol = strstr(c->hs, "\r\n");
        if (eol)
            *eol = 0;
        note_error("handshake refused: %s", c->hs);
        conn_kill(c, 0);
        return;
    }
    *end = 0;
    /* The accept value of our fixed key (RFC 6455 1.3). */
    if (!strstr(c->hs, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")) {
        note_error("handshake: wrong Sec-WebSocket-Accept");
        conn_kill(c, 0);
        return;
    }
    c->deflate = opt_deflate && strcasestr(c->hs, "permessage-deflate") != NULL;
    size_t head = (size_t)(end + 4 - c->hs);
    size_t extra = c->hs_len - head;
    c->state = ST_OPEN;
    n_pending--;
    n_open++;
    if (c->deflate)
        n_deflate++;
    if (extra) {
        uint8_t tmp[HS_MAX];
        memcpy(tmp, c->hs + head, extra);
        size_t used = parse_frames(c, idx, tmp, extra);
        if (c->state == ST_OPEN && used < extra) {
            if (extra - used > CARRY)
                die("handshake leftover too long");
            memcpy(c->carry, tmp + used, extra - used);
            c->carry_len = (uint16_t)(extra - used);
        }
    }
    free(c->hs);
    c->hs = NULL;
}

static void on_readable(conn_t *c, long idx) {
    if (c->state == ST_HANDSHAKE) {
        on_handshake_data(c, idx);
        return;
    }
    if (c->state != ST_OPEN)
        return;
    memcpy(rbuf, c->carry, c->carry_len);
    ssize_t r = read(c->fd, rbuf + c->carry_len, sizeof rbuf - c->carry_len);
    if (r <= 0) {
        if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return;
        if (closing) {
            c->state = ST_DEAD;
            n_open--;
            epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
            close(c->fd);
            return;
        }
        note_error("read: %s", r ? strerror(errno) : "EOF from the server");
        conn_kill(c, 1);
        return;
    }
    size_t n = c->carry_len + (size_t)r;
    size_t used = parse_frames(c, idx, rbuf, n);
    if (c->state != ST_OPEN)
        return;
    if (n - used > CARRY)
        die("frame parser left %zu bytes (a control frame over 125 bytes?)", n - used);
    memmove(c->carry, rbuf + used, n - used);
    c->carry_len = (uint16_t)(n - used);
}

static void on_writable(conn_t *c, long idx) {
    if (c->state == ST_CONNECTING) {
        int err = 0;
        socklen_t len = sizeof err;
        getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
        if (err) {
            note_error("connect: %s", strerror(err));
            conn_kill(c, 0);
            return;
        }
        c->state = ST_HANDSHAKE;
        set_events(c, idx, 0);
        conn_write(c, idx, (const uint8_t *)handshake_req, handshake_len);
        return;
    }
    if (c->out_len)
        conn_flush(c, idx);
    else
        set_events(c, idx, 0);
}

/* Run the event loop once, waiting at most timeout_ms. Returns 1 if stdin is readable. */
static int poll_once(int timeout_ms) {
    struct epoll_event events[1024];
    int ready = epoll_wait(epfd, events, 1024, timeout_ms);
    int stdin_ready = 0;
    for (int i = 0; i < ready; i++) {
        if (events[i].data.u64 == UINT64_MAX) {
            stdin_ready = 1;
            continue;
        }
        long idx = (long)events[i].data.u64;
        conn_t *c = &conns[idx];
        if (c->state == ST_DEAD)
            continue;
        if (events[i].events & (EPOLLOUT | EPOLLERR | EPOLLHUP) && c->state == ST_CONNECTING) {
            on_writable(c, idx);
            continue;
        }
        if (events[i].events & (EPOLLIN | EPOLLERR | EPOLLHUP))
            on_readable(c, idx);
        if (c->state != ST_DEAD && events[i].events & EPOLLOUT)
            on_writable(c, idx);
    }
    return stdin_ready;
}

/* Open connections until `target` have been attempted and none is pending. */
static void open_until(long target, double timeout) {
    uint64_t deadline = now_ns() + (uint64_t)(timeout * 1e9);
    while (now_ns() < deadline) {
        while (nconns_started < target && n_pending < opt_connect_concurrency)
            start_connection();
        if (nconns_started >= target && n_pending == 0)
            return;
        poll_once(10);
    }
    note_error("connect phase timed out after %.0f s", timeout);
    for (long i = 0; i < nconns_started; i++)
        if (conns[i].state == ST_CONNECTING || conns[i].state == ST_HANDSHAKE)
            conn_kill(&conns[i], 0);
}

static void parse_steps(const char *s) {
    char *copy = strdup(s), *save = NULL;
    for (char *tok = strtok_r(copy, ",", &save); tok && opt_nsteps < 16;
         tok = strtok_r(NULL, ",", &save))
        opt_steps[opt_nsteps++] = atol(tok);
    free(copy);
}

static void parse_src(char *s) {
    char *save = NULL;
    for (char *tok = strtok_r(s, ",", &save); tok && n_src < 64; tok = strtok_r(NULL, ",", &save)) {
        memset(&src_addrs[n_src], 0, sizeof src_addrs[n_src]);
        src_addrs[n_src].sin_family = AF_INET;
        if (inet_pton(AF_INET, tok, &src_addrs[n_src].sin_addr) != 1)
            die("bad --src address %s", tok);
        n_src++;
    }
}

static void usage(void) {
    fprintf(stderr,
            "usage: loadgen --port P [--mode echo|idle] [--host H] [--path /p]\n"
            "  echo: [--conns N] [--size B] [--binary] [--payload-file F] [--deflate]\n"
            "        [--duration S] [--warmup S]\n"
            "  idle: --steps N1,N2,... [--probe-timeout S]\n"
            "  both: [--src A1,A2,...] [--connect-concurrency K] [--connect-timeout S]\n");
    exit(2);
}

static void print_histogram_fields(void) {
    printf("\"p50_us\": %.1f, \"p90_us\": %.1f, \"p99_us\": %.1f, \"max_us\": %.1f", percentile(50),
           percentile(90), percentile(99), percentile(100));
}

/* The closing handshake on every open connection (code 1000), waiting up to
   `timeout` for the server's close frame or EOF; then whatever is left is dropped. */
static void close_all(double timeout) {
    static const uint8_t close_frame[8] = {0x88, 0x82, 0, 0, 0, 0, 0x03, 0xe8};
    long open_before = n_open;
    /* Let replies in flight arrive first, so that no server sees a close frame while it
       echoes (some log that as an error). */
    uint64_t drain_deadline = now_ns() + 2000000000ull;
    for (;;) {
        long awaiting = 0;
        for (long i = 0; i < nconns_started; i++)
            awaiting += conns[i].state == ST_OPEN && conns[i].awaiting;
        if (!awaiting || now_ns() >= drain_deadline)
            break;
        poll_once(10);
    }
    closing = 1;
    for (long i = 0; i < nconns_started; i++)
        if (conns[i].state == ST_OPEN)
            conn_write(&conns[i], i, close_frame, sizeof close_frame);
    uint64_t deadline = now_ns() + (uint64_t)(timeout * 1e9);
    while (n_open > 0 && now_ns() < deadline)
        poll_once(10);
    if (n_open > 0)
        fprintf(stderr, "loadgen: %ld of %ld connections did not close within %.0f s\n", n_open,
                open_before, timeout);
    for (long i = 0; i < nconns_started; i++)
        if (conns[i].state != ST_DEAD && conns[i].state != ST_FREE)
            close(conns[i].fd);
}

static void run_echo(void) {
    uint64_t t0 = now_ns();
    open_until(opt_conns, opt_connect_timeout);
    double connect_s = (now_ns() - t0) / 1e9;
    if (!n_open) {
        printf("{\"error\": \"no connection opened: %s\", \"failed\": %ld}\n", first_error, n_failed);
        exit(1);
    }
    uint64_t start = now_ns();
    meas_start = start + (uint64_t)(opt_warmup * 1e9);
    meas_end = meas_start + (uint64_t)(opt_duration * 1e9);
    measuring = sending = 1;
    for (long i = 0; i < nconns_started; i++)
        if (conns[i].state == ST_OPEN)
            send_message(&conns[i], i);
    double cpu0 = 0, cpu1 = 0;
    int started = 0;
    uint64_t t;
    while ((t = now_ns()) < meas_end) {
        if (!started && t >= meas_start) {
            cpu0 = cpu_seconds();
            started = 1;
            printf("{\"event\": \"measure-start\"}\n");
            fflush(stdout);
        }
        int ms = (int)((started ? meas_end : meas_start) - t) / 1000000;
        poll_once(ms < 1 ? 1 : (ms > 100 ? 100 : ms));
        if (!n_open)
            break;
    }
    cpu1 = cpu_seconds();
    printf("{\"event\": \"measure-end\"}\n");
    fflush(stdout);
    double seconds = opt_duration;
    printf("{\"mode\": \"echo\", \"conns\": %ld, \"open\": %ld, \"failed\": %ld, \"dropped\": %ld, "
           "\"deflate\": %ld, \"payload\": %zu, \"frame\": %zu, \"connect_s\": %.3f, "
           "\"seconds\": %.3f, \"msgs\": %llu, \"msgs_per_s\": %.1f, \"mb_per_s\": %.2f, "
           "\"bad_replies\": %ld, \"client_cpu_s\": %.3f, ",
           opt_conns, n_open, n_failed, n_dropped, n_deflate, payload_len,
           n_deflate ? frame_deflate_len : frame_plain_len, connect_s, seconds,
           (unsigned long long)n_msgs, n_msgs / seconds, n_bytes / seconds / 1e6, n_bad_replies,
           cpu1 - cpu0);
    print_histogram_fields();
    printf(", \"error\": \"%s\"}\n", first_error);
    fflush(stdout);
    close_all(3.0);
}

static char cmd_buf[1024];
static size_t cmd_len;

/* Take one line out of cmd_buf into cmd; 0 if there is no whole line yet. */
static int next_line(char *cmd, size_t n) {
    char *eol = memchr(cmd_buf, '\n', cmd_len);
    if (!eol)
        return 0;
    size_t len = (size_t)(eol - cmd_buf);
    size_t copy = len < n - 1 ? len : n - 1;
    memcpy(cmd, cmd_buf, copy);
    cmd[copy] = 0;
    memmove(cmd_buf, eol + 1, cmd_len - len - 1);
    cmd_len -= len + 1;
    return 1;
}

/* Service the connections until a command line arrives on stdin; 0 at EOF. */
static int wait_command(char *cmd, size_t n) {
    for (;;) {
        if (next_line(cmd, n))
            return 1;
        if (poll_once(1000)) {
            ssize_t r = read(0, cmd_buf + cmd_len, sizeof cmd_buf - cmd_len);
            if (r <= 0)
                return 0;
            cmd_len += (size_t)r;
        }
    }
}

/* One unsolicited message on every open connection, or the probe timeout. */
static void await_broadcast(void) {
    for (long i = 0; i < nconns_started; i++)
        conns[i].got_push = 0;
    n_pushed = push_first = push_last = 0;
    push_waiting = 1;
    long open_before = n_open;
    printf("{\"event\": \"listening\", \"open\": %ld}\n", n_open);
    fflush(stdout);
    uint64_t p0 = now_ns(), deadline = p0 + (uint64_t)(opt_probe_timeout * 1e9);
    while (n_pushed < (uint64_t)n_open && now_ns() < deadline)
        poll_once(10);
    push_waiting = 0;
    printf("{\"event\": \"broadcast\", \"received\": %llu, \"open_before\": %ld, "
           "\"open\": %ld, \"dropped\": %ld, \"first\": %.6f, \"last\": %.6f, "
           "\"error\": \"%s\"}\n",
           (unsigned long long)n_pushed, open_before, n_open, n_dropped, push_first / 1e9,
           push_last / 1e9, first_error);
    fflush(stdout);
}

static void run_idle(void) {
    struct epoll_event ev = {.events = EPOLLIN, .data.u64 = UINT64_MAX};
    epoll_ctl(epfd, EPOLL_CTL_ADD, 0, &ev);
    char cmd[256];
    for (int s = 0; s < opt_nsteps; s++) {
        uint64_t t0 = now_ns();
        open_until(opt_steps[s], opt_connect_timeout);
        printf("{\"event\": \"opened\", \"target\": %ld, \"open\": %ld, \"failed\": %ld, "
               "\"dropped\": %ld, \"deflate\": %ld, \"seconds\": %.3f, \"error\": \"%s\"}\n",
               opt_steps[s], n_open, n_failed, n_dropped, n_deflate, (now_ns() - t0) / 1e9,
               first_error);
        fflush(stdout);
        for (;;) {
            if (!wait_command(cmd, sizeof cmd) || !strncmp(cmd, "quit", 4)) {
                close_all(10.0);
                return;
            }
            if (!strncmp(cmd, "next", 4))
                break;
            if (!strncmp(cmd, "probe", 5)) {
                memset(hist, 0, sizeof hist);
                n_answered = 0;
                long asked = 0;
                uint64_t p0 = now_ns();
                for (long i = 0; i < nconns_started; i++) {
                    conn_t *c = &conns[i];
                    if (c->state != ST_OPEN)
                        continue;
                    c->awaiting = 1;
                    c->reply_bytes = 0;
                    c->sent_at = now_ns();
                    if (c->deflate)
                        conn_write(c, i, frame_probe_deflate, frame_probe_deflate_len);
                    else
                        conn_write(c, i, frame_probe, frame_probe_len);
                    asked++;
                    if (!(asked & 255))
                        poll_once(0);
                }
                uint64_t deadline = p0 + (uint64_t)(opt_probe_timeout * 1e9);
                while (n_answered < (uint64_t)asked && now_ns() < deadline)
                    poll_once(10);
                printf("{\"event\": \"probed\", \"asked\": %ld, \"answered\": %llu, \"open\": %ld, "
                       "\"dropped\": %ld, \"seconds\": %.3f, ",
                       asked, (unsigned long long)n_answered, n_open, n_dropped,
                       (now_ns() - p0) / 1e9);
                print_histogram_fields();
                printf(", \"error\": \"%s\"}\n", first_error);
                fflush(stdout);
            }
            if (!strncmp(cmd, "broadcast", 9))
                await_broadcast();
        }
    }
}

int main(int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
#define ARG(name) (!strcmp(a, name) && v && ++i)
        if (ARG("--mode"))
            opt_mode = v;
        else if (ARG("--host"))
            opt_host = v;
        else if (ARG("--port"))
            opt_port = atoi(v);
        else if (ARG("--path"))
            opt_path = v;
        else if (ARG("--conns"))
            opt_conns = atol(v);
        else if (ARG("--steps"))
            parse_steps(v);
        else if (ARG("--size"))
            opt_size = atol(v);
        else if (!strcmp(a, "--binary"))
            opt_binary = 1;
        else if (!strcmp(a, "--deflate"))
            opt_deflate = 1;
        else if (ARG("--payload-file"))
            opt_payload_file = v;
        else if (ARG("--duration"))
            opt_duration = atof(v);
        else if (ARG("--warmup"))
            opt_warmup = atof(v);
        else if (ARG("--src"))
            opt_src = strdup(v);
        else if (ARG("--connect-concurrency"))
            opt_connect_concurrency = atoi(v);
        else if (ARG("--connect-timeout"))
            opt_connect_timeout = atof(v);
        else if (ARG("--probe-timeout"))
            opt_probe_timeout = atof(v);
        else
            usage();
#undef ARG
    }
    int idle = !strcmp(opt_mode, "idle");
    if (!opt_port || (!idle && strcmp(opt_mode, "echo")) || (idle && !opt_nsteps))
        usage();
    memset(&server_addr, 0, sizeof server_addr);
    server_addr.sin_family = AF_INET;
    server_addr.sin_port = htons((uint16_t)opt_port);
    if (inet_pton(AF_INET, opt_host, &server_addr.sin_addr) != 1)
        die("bad --host %s", opt_host);
    if (opt_src)
        parse_src(opt_src);

    nconns_alloc = idle ? opt_steps[opt_nsteps - 1] : opt_conns;
    struct rlimit rl;
    getrlimit(RLIMIT_NOFILE, &rl);
    if (rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    if ((rlim_t)nconns_alloc + 16 > rl.rlim_cur)
        fprintf(stderr, "loadgen: warning: %ld connections but RLIMIT_NOFILE is %llu\n",
                nconns_alloc, (unsigned long long)rl.rlim_cur);
    conns = calloc((size_t)nconns_alloc, sizeof *conns);
    if (!conns)
        die("out of memory");
    epfd = epoll_create1(EPOLL_CLOEXEC);

    handshake_len = (size_t)snprintf(
        handshake_req, sizeof handshake_req,
        "GET %s HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n%s\r\n",
        opt_path, opt_host, opt_port,
        opt_deflate ? "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
                    : "");
    build_payloads();
    if (idle)
        run_idle();
    else
        run_echo();
    return 0;
}
