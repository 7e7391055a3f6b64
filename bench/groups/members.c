/*
 * One client process of the groups benchmark, in C: many WebSocket members, one epoll loop.
 *
 *   members SOURCE_IP COUNT PATH PORT [PORT ...]
 *
 * The same protocol as client.py (which it replaces when a C compiler is there): opens
 * COUNT connections from SOURCE_IP (a 127.0.0.x address), round-robin over the server
 * PORTs on 127.0.0.1, BATCH at a time; a connection the server refuses or drops during
 * set-up is opened again, up to RETRIES in all. Once every member has had the server's
 * first text message ("joined"), prints {"ready": COUNT}. Then, for every text message
 * "<round>" the servers send, it reads CLOCK_MONOTONIC (Python's time.monotonic, so
 * comparable with the sender's t0) when each member got it, and once every living member
 * has it prints {"round": R, "first": t, "last": t, "alive": n}. A member the server
 * drops prints {"dropped": 1}. Ends on EOF of stdin.
 *
 * Why C: on a 2-core machine the members' own CPU competes with the servers'. The Python
 * client spends ~15 us of CPU per message received (epoll, recv, parsing, bookkeeping),
 * which for 1,000 members is as much as the servers' fan-out; this one spends ~3 us, most
 * of it in recv(). What is measured is then the servers' and the layer's time.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define BATCH 50
#define RETRIES 500
#define CONNECT_TIMEOUT 240.0
#define BUF 4096
#define MAX_ROUNDS 4096

typedef struct {
    int fd;
    int port;
    int handshaken;
    int joined;  /* had "joined": a member */
    int alive;
    size_t len;  /* bytes in buf */
    uint8_t buf[BUF];
} member_t;

static member_t *members;
static int nmembers;
static int epfd;
static const char *source, *path;

/* Per round: how many members have it, and the first and last times. */
static int got[MAX_ROUNDS];
static double first_t[MAX_ROUNDS], last_t[MAX_ROUNDS];

static void report(int r, int alive) {
    printf("{\"round\": %d, \"first\": %.6f, \"last\": %.6f, \"alive\": %d}\n", r,
           first_t[r], last_t[r], alive);
    got[r] = -nmembers - 1; /* reported: never again */
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void die(const char *what) {
    fprintf(stderr, "members: %s: %s\n", what, strerror(errno));
    exit(2);
}

static void open_member(member_t *m, int port) {
    static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    struct sockaddr_in src = {0}, dst = {0};
    char key[25], req[512];
    int one = 1, fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) die("socket");
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    src.sin_family = AF_INET;
    inet_pton(AF_INET, source, &src.sin_addr);
    if (bind(fd, (struct sockaddr *)&src, sizeof src) < 0) die("bind");
    dst.sin_family = AF_INET;
    dst.sin_port = htons((uint16_t)port);
    inet_pton(AF_INET, "127.0.0.1", &dst.sin_addr);
    if (connect(fd, (struct sockaddr *)&dst, sizeof dst) < 0) die("connect");
    for (int i = 0; i < 22; i++) key[i] = b64[rand() & 63];
    key[22] = '=', key[23] = '=', key[24] = 0;
    int n = snprintf(req, sizeof req,
                     "GET %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nUpgrade: websocket\r\n"
                     "Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\n"
                     "Sec-WebSocket-Version: 13\r\n\r\n",
                     path, port, key);
    if (write(fd, req, (size_t)n) != n) die("write");
    m->fd = fd, m->port = port, m->handshaken = 0, m->joined = 0, m->alive = 1, m->len = 0;
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = m};
    if (epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev) < 0) die("epoll_ctl");
}

static void close_member(member_t *m) {
    epoll_ctl(epfd, EPOLL_CTL_DEL, m->fd, NULL);
    close(m->fd);
    m->fd = -1, m->alive = 0;
}

/* Read what is there. Returns 0 if the connection ended or broke. */
static int fill(member_t *m) {
    if (m->len == BUF) return 0; /* no frame here is this long */
    ssize_t n = recv(m->fd, m->buf + m->len, BUF - m->len, 0);
    if (n <= 0) return n < 0 && errno == EAGAIN;
    m->len += (size_t)n;
    return 1;
}

/* The next complete frame (server frames are unmasked); 0 if none yet. */
static int next_frame(member_t *m, size_t *off, int *opcode, const uint8_t **payload,
                      size_t *plen) {
    uint8_t *d = m->buf + *off;
    size_t have = m->len - *off, hl = 2, len;
    if (have < 2) return 0;
    len = d[1] & 0x7f;
    if (len == 126) {
        if (have < 4) return 0;
        len = (size_t)d[2] << 8 | d[3], hl = 4;
    } else if (len == 127) {
        return 0; /* never sent here */
    }
    if (have < hl + len) return 0;
    *opcode = d[0] & 0x0f, *payload = d + hl, *plen = len;
    *off += hl + len;
    return 1;
}

static void consume(member_t *m, size_t off) {
    memmove(m->buf, m->buf + off, m->len - off);
    m->len -= off;
}

int main(int argc, char **argv) {
    if (argc < 5) {
        fprintf(stderr, "usage: members SOURCE_IP COUNT PATH PORT [PORT ...]\n");
        return 2;
    }
    source = argv[1], nmembers = atoi(argv[2]), path = argv[3];
    int nports = argc - 4, *ports = malloc(sizeof(int) * (size_t)nports);
    for (int i = 0; i < nports; i++) ports[i] = atoi(argv[4 + i]);
    struct rlimit rl;
    getrlimit(RLIMIT_NOFILE, &rl);
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
    srand((unsigned)getpid());
    setvbuf(stdout, NULL, _IOLBF, 0);
    members = calloc((size_t)nmembers, sizeof(member_t));
    epfd = epoll_create1(0);
    if (!members || epfd < 0) die("set-up");

    struct epoll_event events[512];
    int retries = RETRIES, joined = 0;
    double deadline = now() + CONNECT_TIMEOUT;
    for (int first = 0; first < nmembers; first += BATCH) {
        int last = first + BATCH < nmembers ? first + BATCH : nmembers;
        for (int i = first; i < last; i++) open_member(&members[i], ports[i % nports]);
        while (joined < last) {
            if (now() > deadline) {
                fprintf(stderr, "members: %d not joined in %.0f s\n", last - joined,
                        CONNECT_TIMEOUT);
                return 1;
            }
            int n = epoll_wait(epfd, events, 512, 1000);
            for (int e = 0; e < n; e++) {
                member_t *m = events[e].data.ptr;
                int ok = fill(m);
                if (ok && !m->handshaken) {
                    uint8_t *end = memmem(m->buf, m->len, "\r\n\r\n", 4);
                    if (!end) continue;
                    ok = m->len >= 12 && memcmp(m->buf, "HTTP/1.1 101", 12) == 0;
                    m->handshaken = 1;
                    consume(m, (size_t)(end + 4 - m->buf));
                }
                if (!ok) { /* refused, or dropped (even after joining): open it again */
                    if (--retries < 0) {
                        fprintf(stderr, "members: more than %d connections failed\n", RETRIES);
                        return 1;
                    }
                    joined -= m->joined;
                    int port = m->port;
                    close_member(m);
                    open_member(m, port);
                    continue;
                }
                size_t off = 0, plen;
                int opcode;
                const uint8_t *payload;
                while (next_frame(m, &off, &opcode, &payload, &plen)) {
                    if (opcode == 1 && plen == 6 && !memcmp(payload, "joined", 6) && !m->joined)
                        m->joined = 1, joined++;
                }
                consume(m, off);
            }
        }
    }
    printf("{\"ready\": %d}\n", joined);

    struct epoll_event in = {.events = EPOLLIN, .data.ptr = NULL};
    if (epoll_ctl(epfd, EPOLL_CTL_ADD, 0, &in) < 0) die("epoll_ctl stdin");
    int alive = nmembers;
    for (;;) {
        int n = epoll_wait(epfd, events, 512, -1);
        if (n < 0 && errno != EINTR) die("epoll_wait");
        for (int e = 0; e < n; e++) {
            member_t *m = events[e].data.ptr;
            if (m == NULL) {
                char scratch[4096];
                if (read(0, scratch, sizeof scratch) <= 0) {
                    for (int i = 0; i < nmembers; i++)
                        if (members[i].fd >= 0) close(members[i].fd);
                    return 0;
                }
                continue;
            }
            int ok = fill(m);
            double t = now();
            if (!ok) {
                close_member(m);
                alive--;
                printf("{\"dropped\": 1}\n");
                for (int r = 0; r < MAX_ROUNDS; r++) /* rounds now complete without it */
                    if (got[r] > 0 && got[r] >= alive) report(r, alive);
                continue;
            }
            size_t off = 0, plen;
            int opcode;
            const uint8_t *payload;
            while (next_frame(m, &off, &opcode, &payload, &plen)) {
                if (opcode != 1 || plen == 0 || plen > 9) continue;
                int r = 0;
                for (size_t i = 0; i < plen; i++) r = r * 10 + (payload[i] - '0');
                if (r < 0 || r >= MAX_ROUNDS) continue;
                if (got[r]++ == 0) first_t[r] = t;
                last_t[r] = t;
                if (got[r] >= alive) report(r, alive);
            }
            consume(m, off);
        }
    }
}
