/* SPDX-License-Identifier: MIT */
/*
 * http/accesslog.c: the access log, one task per shard that writes what
 * the shard's connections log, so that the loop never waits for the log's
 * fd.
 *
 * A line is formatted straight into the active half of a two-half buffer
 * in the log task's frame; the task writes the other half with keel_write
 * (a pipe or file that blocks blocks an io-wq worker, not the loop) and
 * swaps when it is done. A line that does not fit in the active half is
 * dropped and counted (stats.log_dropped): a log that cannot keep up loses
 * lines, never latency. The buffers live in the frame because a write's
 * buffer belongs to the kernel until its completion, and a frame outlives
 * its task until then.
 *
 * Lifetime: the task observes a token of its own, a child of the loop's
 * root. When the root is cancelled (keel_runtime_shutdown) the server is
 * draining and its last requests still log, so the task puts up a shield
 * (drain_timeout + 1 s) and goes on. keel__http_log_stop() lets it flush
 * what is buffered within LOG_FLUSH_NS and exit; a reader that never reads
 * cannot hold the loop longer than that.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#include "internal.h"

#define LOG_HALF     (32u * 1024) /* each half; a longer line is dropped */
#define LOG_FLUSH_NS (1000ull * 1000 * 1000)
#define SEC_NS	     (1000ull * 1000 * 1000)

struct log {
	struct keel_task task;
	struct keel__http_shard *sh;
	struct keel_event *wake; /* set: the active half has lines */
	struct keel_shield shield;
	int fd;
	bool stopping;	   /* keel__http_log_stop() was called */
	bool shielded;	   /* the root was cancelled: the shield is up */
	unsigned active;   /* the half lines go into */
	unsigned writing;  /* the half being written */
	uint32_t off;	   /* bytes of the writing half written */
	uint32_t used[2];  /* bytes in each half */
	uint32_t lines[2]; /* lines in each half (dropped on an error) */
	int64_t stamp_sec; /* the second `stamp` shows */
	char stamp[29];	   /* "[06/Dec/2026:06:00:00 +0000]" */
	char buf[2][LOG_HALF];
};

/* ---- the task ------------------------------------------------------- */

static void drop(struct log *l, uint64_t lines)
{
	if (lines)
		KEEL__HTTP_COUNT(l->sh, log_dropped, lines);
}

/*
 * An await ended with the task's cancellation cause. The root's
 * cancellation (a shutdown) is not the log's end: put up a shield and go
 * on. After keel__http_log_stop()'s deadline, or the shield's, give up.
 * Returns true to go on.
 */
static bool on_cancel(struct keel_task *t, struct log *l)
{
	const struct keel_http_opts *o = &l->sh->srv->opts;
	uint64_t ns;

	if (l->stopping || l->shielded)
		return false;
	ns = o->drain_timeout_ns >= UINT64_MAX - SEC_NS
		 ? UINT64_MAX
		 : o->drain_timeout_ns + SEC_NS;
	if (keel_shield_begin(t, &l->shield, ns))
		return false;
	l->shielded = true;
	return true;
}

static bool cancelled(struct keel_task *t)
{
	return keel_token_cause(keel_task_token(t)) != 0;
}

static int log_step(struct keel_task *t)
{
	struct log *l = keel_container_of(t, struct log, task);
	int r;

	KEEL_BEGIN(t);
	for (;;) {
		if (!l->used[l->active]) {
			if (l->stopping)
				break;
			keel_event_clear(l->wake);
			KEEL_AWAIT(t, keel_event_wait(t, l->wake));
			if (keel_res(t) < 0 && !on_cancel(t, l))
				break;
			continue;
		}
		/* New lines go to the other half while this one is written. */
		l->writing = l->active;
		l->active ^= 1;
		l->off = 0;
		while (l->off < l->used[l->writing]) {
			KEEL_AWAIT(t, keel_write(t, l->fd,
						 l->buf[l->writing] + l->off,
						 l->used[l->writing] - l->off,
						 KEEL_OFF_CURRENT));
			r = keel_res(t);
			if (r > 0) {
				l->off += (uint32_t)r;
			} else if (r < 0 && cancelled(t)) {
				if (!on_cancel(t, l))
					goto out;
			} else {
				/* The fd fails (EBADF, EPIPE, ENOSPC...): this
				 * half's lines are lost; later ones may fare
				 * better (a file system with room again). */
				drop(l, l->lines[l->writing]);
				break;
			}
		}
		l->used[l->writing] = 0;
		l->lines[l->writing] = 0;
	}
out:
	/* Lines still buffered when the log gives up are lost. The writing
	 * half's were counted if its write failed, and it was emptied. */
	drop(l, (uint64_t)l->lines[0] + l->lines[1]);
	l->sh->log = NULL;
	keel_event_free(l->wake);
	KEEL_END(t);
}

static KEEL_TASK_TYPE(log_task, struct log, task, log_step);

int keel__http_log_start(struct keel__http_shard *sh)
{
	struct keel_event *wake;
	struct keel_token *tok;
	struct log *l;
	int fd = sh->srv->opts.access_log_fd;
	int err;

	if (fd <= 0)
		return 0;
	err = keel_event_new(sh->loop, &wake);
	if (err)
		return err;
	err = keel_token_new(sh->loop, NULL, &tok);
	if (err) {
		keel_event_free(wake);
		return err;
	}
	l = keel_spawn(sh->loop, &log_task, KEEL_PRIO_LOW);
	if (!l) {
		keel_token_release(tok);
		keel_event_free(wake);
		return -ENOMEM;
	}
	l->sh = sh;
	l->fd = fd;
	l->wake = wake;
	l->stamp_sec = -1;
	memcpy(l->stamp, "[dd/Mon/yyyy:hh:mm:ss +0000]", 28);
	err = keel_task_set_token(&l->task, tok);
	keel_token_release(tok);
	if (err) {
		/* Without a token of its own, keel__http_log_stop() would
		 * put its deadline on the loop's root: no log. The task is
		 * spawned; it finds itself stopped and exits. */
		l->stopping = true;
		return err;
	}
	sh->log = l;
	return 0;
}

void keel__http_log_stop(struct keel__http_shard *sh)
{
	struct log *l = sh->log;

	if (!l || l->stopping)
		return;
	l->stopping = true;
	keel_event_set(l->wake);
	/* The token the task observes now: its own, or its shield's. */
	keel_token_set_timeout(keel_task_token(&l->task), LOG_FLUSH_NS);
}

/* ---- formatting a line ---------------------------------------------- */

/* Appends into the active half; `over` once a byte did not fit. */
struct line {
	char *p;
	char *end;
	bool over;
};

static void put(struct line *w, const char *s, size_t n)
{
	if (w->over || n > (size_t)(w->end - w->p)) {
		w->over = true;
		return;
	}
	memcpy(w->p, s, n);
	w->p += n;
}

static void put_u64(struct line *w, uint64_t v)
{
	char tmp[20];
	size_t i = sizeof(tmp);

	do {
		tmp[--i] = (char)('0' + v % 10);
		v /= 10;
	} while (v);
	put(w, tmp + i, sizeof(tmp) - i);
}

/* Request bytes as nginx logs them: a byte that could break the line or
 * its quoting (control, non-ASCII, '"', '\') as \xHH. */
static void put_escaped(struct line *w, const char *s, size_t n)
{
	static const char hex[] = "0123456789ABCDEF";

	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];

		if (c < 0x20 || c >= 0x7f || c == '"' || c == '\\') {
			char e[4] = {'\\', 'x', hex[c >> 4], hex[c & 15]};

			put(w, e, 4);
		} else {
			put(w, s + i, 1);
		}
	}
}

/* `v` as exactly `n` decimal digits at `p`. */
static void digits(char *p, int n, unsigned v)
{
	while (n--) {
		p[n] = (char)('0' + v % 10);
		v /= 10;
	}
}

/* "[06/Dec/2026:06:00:00 +0000]", formatted once a second (months by
 * name from a table: strftime's %b follows the locale). */
static const char *stamp(struct log *l, size_t *len)
{
	static const char months[] = "JanFebMarAprMayJunJulAugSepOctNovDec";
	struct timespec ts;
	struct tm tm;

	clock_gettime(CLOCK_REALTIME_COARSE, &ts);
	if (ts.tv_sec != l->stamp_sec) {
		time_t sec = ts.tv_sec;

		gmtime_r(&sec, &tm);
		l->stamp_sec = ts.tv_sec;
		digits(l->stamp + 1, 2, (unsigned)tm.tm_mday);
		memcpy(l->stamp + 4, months + 3 * tm.tm_mon, 3);
		digits(l->stamp + 8, 4, (unsigned)tm.tm_year + 1900);
		digits(l->stamp + 13, 2, (unsigned)tm.tm_hour);
		digits(l->stamp + 16, 2, (unsigned)tm.tm_min);
		digits(l->stamp + 19, 2, (unsigned)tm.tm_sec);
	}
	*len = 28;
	return l->stamp;
}

/*
 * The client's address. The exchange is to keep it from the accept, and
 * exchange.c's keel__http_peer() then replaces this one (a weak
 * definition); until then, getpeername(2) on the connection: a system call
 * per line, only when there is a log.
 */
__attribute__((weak)) int keel__http_peer(const struct keel_http_exchange *x,
					  char *buf, size_t len)
{
	struct sockaddr_storage ss;
	socklen_t sl = sizeof(ss);
	const void *addr;

	if (getpeername(keel__http_fd(x), (struct sockaddr *)&ss, &sl))
		return -errno;
	if (ss.ss_family == AF_INET)
		addr = &((const struct sockaddr_in *)&ss)->sin_addr;
	else if (ss.ss_family == AF_INET6)
		addr = &((const struct sockaddr_in6 *)&ss)->sin6_addr;
	else
		return -EAFNOSUPPORT;
	if (!inet_ntop(ss.ss_family, addr, buf, (socklen_t)len))
		return -ENOSPC;
	return (int)strlen(buf);
}

void keel__http_log(struct keel__http_shard *sh,
		    const struct keel_http_exchange *x, int status,
		    uint64_t body_bytes, uint64_t ns)
{
	struct log *l = sh->log;
	uint32_t *used;
	struct line w;
	char peer[64];
	const char *s, *p;
	size_t n;
	int plen;

	if (!l)
		return;
	used = &l->used[l->active];
	w = (struct line){.p = l->buf[l->active] + *used,
			  .end = l->buf[l->active] + LOG_HALF};
	plen = keel__http_peer(x, peer, sizeof(peer));
	if (plen > 0 && (size_t)plen < sizeof(peer))
		put(&w, peer, (size_t)plen);
	else
		put(&w, "-", 1);
	put(&w, " - - ", 5);
	s = stamp(l, &n);
	put(&w, s, n);
	put(&w, " \"", 2);
	s = keel_http_method(x);
	p = keel_http_path(x, &n);
	if (s && *s && p && n) {
		put_escaped(&w, s, strlen(s));
		put(&w, " ", 1);
		put_escaped(&w, p, n);
		s = keel_http_query(x, &n);
		if (s && n) {
			put(&w, "?", 1);
			put_escaped(&w, s, n);
		}
		put(&w,
		    keel_http_version(x) == 10 ? " HTTP/1.0\" "
					       : " HTTP/1.1\" ",
		    11);
	} else {
		/* Refused before its request line was whole (400, 414):
		 * no path yet (an origin-form one is never empty), "-", as
		 * nginx logs it. */
		put(&w, "-\" ", 3);
	}
	put_u64(&w, (uint64_t)(status > 0 ? status : 0));
	put(&w, " ", 1);
	put_u64(&w, body_bytes);
	put(&w, " ", 1);
	put_u64(&w, ns / 1000);
	put(&w, "us\n", 3);
	if (w.over) {
		drop(l, 1);
		return;
	}
	*used = (uint32_t)(w.p - l->buf[l->active]);
	l->lines[l->active]++;
	if (!keel_event_is_set(l->wake))
		keel_event_set(l->wake);
}
