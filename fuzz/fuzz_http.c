/* SPDX-License-Identifier: MIT */
/*
 * fuzz_http.c: libkeel-http's request path on the simulated kernel
 * (keel/sim.h). Each input builds a fresh machine (its seed, latency and
 * short-transfer rate: the first bytes) with one loop, an HTTP server on it
 * (default or tight limits, a small or a page-sized buffer ring, at or
 * under its connection cap, an access log to a file of the machine's or
 * none: the next two bytes) with a fixed text route, handler tasks (echo a
 * body as it streams in, read it whole, sleep, report what the accessors
 * say, panic, exit without answering), /metrics and /health; then 1 to 4
 * clients connect. The rest of the input is records: a control byte, and
 * for a write the bytes up to the next 0xff: write them on a client, let
 * virtual time pass, reset or close a client.
 *
 * At the end virtual time runs past every timeout (they are short here),
 * the clients are closed, the server drained (keel_http_server_drain or
 * the loop's root token cancelled), and the machine runs until nothing is
 * alive. Then:
 *   - what each client received parses as HTTP/1.1 responses
 *     (http_parser in HTTP_RESPONSE mode; a response to HEAD has no body);
 *   - no more final responses than requests the client started (its bytes
 *     parsed in HTTP_REQUEST mode, plus one for a malformed rest);
 *   - a library error status (400, 413, 414, 431, 501, 505) says
 *     Connection: close, and nothing follows a response that is not
 *     keep-alive (http_parser refuses bytes after it);
 *   - a client that sent only whole, well-formed requests and did not go
 *     away got an answer to each, unless a response closed the connection
 *     or was cut short, or the server cut a connection on a timeout (it
 *     may have come between two of the client's writes);
 *   - the server closed every connection within its timeouts;
 *   - no task, op, timer, buffer or frame left (keel_loop_stats), every
 *     descriptor closed (keel_sim_check); ASan, UBSan and LeakSanitizer
 *     watch the rest.
 * A broken promise aborts (libFuzzer keeps the input) after printing what
 * the client sent and received. FUZZ_HTTP_DEBUG=1 prints each client's
 * tally (requests, responses, the last status) for an input that passes.
 */
#include "program.h"

#include <http_parser.h>
#include <keel/http.h>
#include <keel/sim.h>

#define MAX_CLIENTS 4
#define PORT	    8080
#define MS	    1000000ull
#define SEC	    (1000 * MS)
#define GOT_CAP	    (1u << 20) /* bytes a client keeps of what it reads */
#define MAX_REQS    4096

enum piece_kind { P_WRITE, P_CLOSE };

struct piece {
	struct piece *next;
	enum piece_kind kind;
	size_t len;
	char data[];
};

struct client {
	struct world *w;
	unsigned id;
	int fd; /* -1 once closed */
	struct piece *head, **tail;
	struct keel_task *writer; /* running, or NULL */
	struct keel_task *reader; /* NULL once it ended */
	char *sent;		  /* every byte written (or tried) */
	size_t sent_len, sent_cap;
	char *got; /* what was read (the first GOT_CAP bytes) */
	size_t got_len, got_total;
	bool eof;	   /* the server closed it */
	int read_err;	   /* or the read failed */
	bool went_away;	   /* closed or reset by the input */
	bool write_failed; /* a write failed: what was sent is a prefix */
};

struct world {
	struct keel_sim *sim;
	struct keel_loop *loop;
	struct keel_http_server *srv;
	int lfd;
	int log_fd; /* the access log's, or -1 */
	unsigned nclients;
	struct client clients[MAX_CLIENTS];
	bool setup_done;
};

/* ---- the server's handlers ----------------------------------------- */

/* Streams the request body back as it comes. */
struct echo_handler {
	struct keel_http_handler h;
	const char *data;
	int n;
};

static int echo_step(struct keel_task *t)
{
	struct echo_handler *e =
	    keel_container_of(t, struct echo_handler, h.task);

	KEEL_BEGIN(t);
	KEEL_AWAIT_CALL(t, keel_http_stream_begin(t, e->h.x, 200,
						  "application/octet-stream"));
	if (keel_res(t) < 0)
		KEEL_EXIT(t, 0);
	for (;;) {
		KEEL_AWAIT_CALL(t, keel_http_body_read(t, e->h.x, &e->data));
		if (keel_res(t) <= 0)
			break;
		e->n = keel_res(t);
		KEEL_AWAIT_CALL(
		    t, keel_http_stream_write(t, e->h.x, e->data, e->n));
		if (keel_res(t) < 0)
			KEEL_EXIT(t, keel_res(t));
	}
	if (keel_res(t) < 0) /* the library closes the connection */
		KEEL_EXIT(t, keel_res(t));
	KEEL_AWAIT_CALL(t, keel_http_stream_end(t, e->h.x));
	KEEL_END(t);
}

/* Reads the body whole (256 bytes at most), then answers its length. */
struct all_handler {
	struct keel_http_handler h;
	const char *data;
	char text[32];
};

static int all_step(struct keel_task *t)
{
	struct all_handler *a =
	    keel_container_of(t, struct all_handler, h.task);

	KEEL_BEGIN(t);
	KEEL_AWAIT_CALL(t, keel_http_body_read_all(t, a->h.x, 256, &a->data));
	if (keel_res(t) < 0)
		snprintf(a->text, sizeof(a->text), "error %d\n", keel_res(t));
	else
		snprintf(a->text, sizeof(a->text), "%d bytes\n", keel_res(t));
	KEEL_AWAIT_CALL(
	    t, keel_http_respond(t, a->h.x, keel_res(t) < 0 ? 413 : 200,
				 "text/plain", a->text, strlen(a->text)));
	KEEL_END(t);
}

/* Sleeps 10 ms of virtual time, then answers (pipelined requests wait). */
struct sleep_handler {
	struct keel_http_handler h;
};

static int sleep_step(struct keel_task *t)
{
	struct sleep_handler *s =
	    keel_container_of(t, struct sleep_handler, h.task);

	KEEL_BEGIN(t);
	KEEL_AWAIT(t, keel_sleep(t, 10 * MS));
	if (keel_res(t) < 0) /* cancelled: it exits saying so */
		KEEL_EXIT(t, keel_res(t));
	KEEL_AWAIT_CALL(
	    t, keel_http_respond(t, s->h.x, 200, "text/plain", "slept\n", 6));
	KEEL_END(t);
}

/* Answers what the accessors say of the request, with a header added. */
struct info_handler {
	struct keel_http_handler h;
	char text[1024];
};

static int info_step(struct keel_task *t)
{
	struct info_handler *in =
	    keel_container_of(t, struct info_handler, h.task);
	struct keel_http_exchange *x = in->h.x;
	size_t len = 0, plen, qlen, nlen, vlen, hlen;
	const char *path, *query, *name, *value, *host;
	unsigned n;

	KEEL_BEGIN(t);
	path = keel_http_path(x, &plen);
	query = keel_http_query(x, &qlen);
	host = keel_http_header(x, "HOST", &hlen);
	n = keel_http_header_count(x);
	len += (size_t)snprintf(
	    in->text, sizeof(in->text),
	    "%s %.*s ? %.*s v%d len %lld host %.*s\n", keel_http_method(x),
	    (int)(plen > 64 ? 64 : plen), path, (int)(qlen > 64 ? 64 : qlen),
	    query, keel_http_version(x), (long long)keel_http_body_length(x),
	    host ? (int)hlen : 0, host ? host : "");
	for (unsigned i = 0; i <= n && len < sizeof(in->text); i++) {
		int err =
		    keel_http_header_at(x, i, &name, &nlen, &value, &vlen);

		if (i == n) {
			if (err != -ERANGE)
				violation(
				    "keel_http_header_at past the end: %d",
				    err);
			break;
		}
		if (err)
			violation("keel_http_header_at(%u of %u): %d", i, n,
				  err);
		len += (size_t)snprintf(
		    in->text + len, sizeof(in->text) - len, "%.*s=%zu\n",
		    (int)(nlen > 32 ? 32 : nlen), name, vlen);
	}
	if (len >= sizeof(in->text))
		len = sizeof(in->text) - 1;
	if (keel_http_add_header(x, "X-Info", "1") ||
	    keel_http_add_header(x, "Content-Length", "1") != -EINVAL)
		violation("keel_http_add_header: not as documented");
	KEEL_AWAIT_CALL(
	    t, keel_http_respond(t, in->h.x, 200, "text/plain", in->text, len));
	KEEL_END(t);
}

/* Panics (500), or exits without answering: the library answers. */
struct bad_handler {
	struct keel_http_handler h;
};

static int panic_step(struct keel_task *t)
{
	KEEL_BEGIN(t);
	keel_panic("fuzz_http: the /panic handler panics");
	KEEL_END(t);
}

static int none_step(struct keel_task *t)
{
	KEEL_BEGIN(t);
	KEEL_END(t);
}

static KEEL_HTTP_HANDLER_TYPE(echo_type, struct echo_handler, h, echo_step);
static KEEL_HTTP_HANDLER_TYPE(all_type, struct all_handler, h, all_step);
static KEEL_HTTP_HANDLER_TYPE(sleep_type, struct sleep_handler, h, sleep_step);
static KEEL_HTTP_HANDLER_TYPE(info_type, struct info_handler, h, info_step);
static KEEL_HTTP_HANDLER_TYPE(panic_type, struct bad_handler, h, panic_step);
static KEEL_HTTP_HANDLER_TYPE(none_type, struct bad_handler, h, none_step);

/* ---- the clients ---------------------------------------------------- */

struct writer {
	struct keel_task task;
	struct client *c;
	struct piece *p; /* being written */
};

struct reader {
	struct keel_task task;
	struct client *c;
	char buf[4096];
};

struct setup {
	struct keel_task task;
	struct world *w;
	unsigned i;
	struct sockaddr_storage ss;
	socklen_t sslen;
};

struct cleanup {
	struct keel_task task;
	struct world *w;
	unsigned i;
	bool log; /* close the access log, not the clients */
};

static int writer_step(struct keel_task *t);
static int reader_step(struct keel_task *t);
static int setup_step(struct keel_task *t);
static int cleanup_step(struct keel_task *t);
static KEEL_TASK_TYPE(fz_writer, struct writer, task, writer_step);
static KEEL_TASK_TYPE(fz_reader, struct reader, task, reader_step);
static KEEL_TASK_TYPE(fz_setup, struct setup, task, setup_step);
static KEEL_TASK_TYPE(fz_cleanup, struct cleanup, task, cleanup_step);

static void append(char **buf, size_t *len, size_t *cap, const void *data,
		   size_t n)
{
	if (*len + n > *cap) {
		size_t ncap = *cap ? *cap : 256;

		while (ncap < *len + n)
			ncap *= 2;
		char *nb = realloc(*buf, ncap);

		if (!nb)
			violation("out of memory");
		*buf = nb;
		*cap = ncap;
	}
	memcpy(*buf + *len, data, n);
	*len += n;
}

static void writer_gone(void *arg)
{
	struct writer *wr = arg;

	free(wr->p);
	wr->p = NULL;
	wr->c->writer = NULL;
}

static int writer_step(struct keel_task *t)
{
	struct writer *wr = keel_container_of(t, struct writer, task);
	struct client *c = wr->c;
	int fd;

	KEEL_BEGIN(t);
	while ((wr->p = c->head)) {
		c->head = wr->p->next;
		if (!c->head)
			c->tail = &c->head;
		if (wr->p->kind == P_CLOSE) {
			free(wr->p);
			wr->p = NULL;
			if (c->reader)
				keel_task_cancel(c->reader);
			if (c->fd < 0)
				continue;
			fd = c->fd;
			c->fd = -1;
			KEEL_AWAIT(t, keel_close(t, fd));
			continue;
		}
		if (c->fd >= 0 && !c->write_failed) {
			KEEL_AWAIT(t, keel_send_all(t, c->fd, wr->p->data,
						    wr->p->len, MSG_NOSIGNAL));
			/* A failed write may have sent a part: what the
			 * server saw is a prefix of what is kept. */
			if (keel_res(t) < 0)
				c->write_failed = true;
			append(&c->sent, &c->sent_len, &c->sent_cap,
			       wr->p->data, wr->p->len);
		}
		free(wr->p);
		wr->p = NULL;
	}
	KEEL_END(t);
}

static void reader_gone(void *arg)
{
	struct reader *rd = arg;

	rd->c->reader = NULL;
}

static int reader_step(struct keel_task *t)
{
	struct reader *rd = keel_container_of(t, struct reader, task);
	struct client *c = rd->c;
	size_t n, keep;

	KEEL_BEGIN(t);
	for (;;) {
		KEEL_AWAIT(t, keel_recv(t, c->fd, rd->buf, sizeof(rd->buf), 0));
		if (keel_res(t) == 0) {
			c->eof = true;
			break;
		}
		if (keel_res(t) < 0) {
			c->read_err = keel_res(t);
			break;
		}
		n = (size_t)keel_res(t);
		keep = c->got_len + n > GOT_CAP ? GOT_CAP - c->got_len : n;
		memcpy(c->got + c->got_len, rd->buf, keep);
		c->got_len += keep;
		c->got_total += n;
	}
	KEEL_END(t);
}

static void start_reader(struct client *c)
{
	struct reader *rd =
	    keel_spawn(c->w->loop, &fz_reader, KEEL_PRIO_NORMAL);

	if (!rd)
		violation("keel_spawn: out of memory");
	rd->c = c;
	c->reader = keel_task_of(&fz_reader, rd);
	if (keel_defer(c->reader, reader_gone, rd))
		violation("keel_defer: out of memory");
}

static int setup_step(struct keel_task *t)
{
	struct setup *s = keel_container_of(t, struct setup, task);
	struct world *w = s->w;

	KEEL_BEGIN(t);
	keel_net_parse_addr("127.0.0.1", PORT, &s->ss, &s->sslen);
	for (s->i = 0; s->i < w->nclients; s->i++) {
		KEEL_AWAIT(t, keel_socket(t, AF_INET, SOCK_STREAM, 0));
		if (keel_res(t) < 0)
			violation("socket: %s", keel_strerror(keel_res(t)));
		w->clients[s->i].fd = keel_res(t);
		KEEL_AWAIT(t,
			   keel_connect(t, w->clients[s->i].fd,
					(struct sockaddr *)&s->ss, s->sslen));
		if (keel_res(t) < 0)
			violation("connect: %s", keel_strerror(keel_res(t)));
		start_reader(&w->clients[s->i]);
	}
	w->setup_done = true;
	KEEL_END(t);
}

/* Close what the clients still hold (under the cancelled root token
 * keel_close still runs). */
static int cleanup_step(struct keel_task *t)
{
	struct cleanup *cu = keel_container_of(t, struct cleanup, task);
	struct world *w = cu->w;
	int fd;

	KEEL_BEGIN(t);
	if (cu->log) {
		fd = w->log_fd;
		w->log_fd = -1;
		KEEL_AWAIT(t, keel_close(t, fd));
		KEEL_EXIT(t, 0);
	}
	for (cu->i = 0; cu->i < w->nclients; cu->i++) {
		fd = w->clients[cu->i].fd;
		if (fd < 0)
			continue;
		w->clients[cu->i].fd = -1;
		KEEL_AWAIT(t, keel_close(t, fd));
	}
	KEEL_END(t);
}

/* Queue a piece on a client and make sure its writer runs. */
static void queue(struct client *c, enum piece_kind kind, const uint8_t *data,
		  size_t len)
{
	struct piece *p = malloc(sizeof(*p) + len);

	if (!p)
		violation("out of memory");
	p->next = NULL;
	p->kind = kind;
	p->len = len;
	if (len)
		memcpy(p->data, data, len);
	*c->tail = p;
	c->tail = &p->next;
	if (c->writer)
		return;
	struct writer *wr =
	    keel_spawn(c->w->loop, &fz_writer, KEEL_PRIO_NORMAL);

	if (!wr)
		violation("keel_spawn: out of memory");
	wr->c = c;
	c->writer = keel_task_of(&fz_writer, wr);
	if (keel_defer(c->writer, writer_gone, wr))
		violation("keel_defer: out of memory");
}

static void run(struct world *w, uint64_t ns)
{
	int err = keel_sim_run(w->sim, ns);

	if (err && err != -ETIME)
		violation("keel_sim_run: %s", keel_strerror(err));
}

/* ---- the checks ------------------------------------------------------ */

/* What a client's bytes say, parsed as requests. */
struct reqs {
	unsigned started, complete;
	unsigned bound;	     /* the most requests the server can have seen */
	bool head[MAX_REQS]; /* request i was HEAD */
	bool error;	     /* a malformed rest */
	bool upgrade;	     /* an upgrade or CONNECT: the rest is not HTTP */
};

static int req_begin(http_parser *p)
{
	struct reqs *r = p->data;

	r->started++;
	return 0;
}

static int req_headers(http_parser *p)
{
	struct reqs *r = p->data;

	if (r->complete < MAX_REQS)
		r->head[r->complete] = p->method == HTTP_HEAD;
	return 0;
}

static int req_complete(http_parser *p)
{
	struct reqs *r = p->data;

	r->complete++;
	http_parser_pause(p, 1); /* parse_requests() notes where it ended */
	return 0;
}

static void parse_requests(const struct client *c, struct reqs *r)
{
	http_parser_settings s = {.on_message_begin = req_begin,
				  .on_headers_complete = req_headers,
				  .on_message_complete = req_complete};
	http_parser p;
	size_t off = 0, end = 0;

	memset(r, 0, sizeof(*r));
	http_parser_init(&p, HTTP_REQUEST);
	p.data = r;
	while (off < c->sent_len) {
		off += http_parser_execute(&p, &s, c->sent + off,
					   c->sent_len - off);
		if (HTTP_PARSER_ERRNO(&p) != HPE_PAUSED)
			break;
		http_parser_pause(&p, 0);
		end = off; /* a request ended here */
	}
	if (p.upgrade)
		r->upgrade = true;
	else if (HTTP_PARSER_ERRNO(&p) != HPE_OK || off != c->sent_len)
		r->error = true;
	/* What follows the last whole request (part of one, something
	 * malformed, blank lines or a bare LF) is at most one more to the
	 * server: it answers it or closes. */
	r->bound = r->complete + (end < c->sent_len ? 1 : 0);
}

/* The responses a client read. */
struct resps {
	const struct client *c;
	const struct reqs *reqs;
	unsigned finals; /* final (non-1xx) responses begun */
	int status;	 /* of the last one */
	bool keep_alive; /* the last one's */
	bool complete;	 /* the last one ended */
};

static void dump(const char *what, const char *buf, size_t len)
{
	fprintf(stderr, "fuzz_http: %s (%zu bytes):\n", what, len);
	for (size_t i = 0; i < len && i < 2048; i++) {
		unsigned char ch = (unsigned char)buf[i];

		if (ch == '\n')
			fputs("\\n\n", stderr);
		else if (ch >= 0x20 && ch < 0x7f)
			fputc(ch, stderr);
		else
			fprintf(stderr, "\\x%02x", ch);
	}
	fputc('\n', stderr);
}

static bool library_error(int status)
{
	switch (status) {
	case 400:
	case 413:
	case 414:
	case 431:
	case 501:
	case 505:
		return true;
	}
	return false;
}

static int resp_headers(http_parser *p)
{
	struct resps *r = p->data;
	const struct reqs *q = r->reqs;
	unsigned i;

	if (p->status_code / 100 == 1) {
		if (p->status_code != 100)
			violation("client %u: interim response %u", r->c->id,
				  p->status_code);
		return 0;
	}
	i = r->finals++;
	r->status = p->status_code;
	r->keep_alive = http_should_keep_alive(p);
	r->complete = false;
	if (!q->upgrade && r->finals > q->bound) {
		dump("sent", r->c->sent, r->c->sent_len);
		dump("received", r->c->got, r->c->got_len);
		violation("client %u: response %u, but %u request(s) started",
			  r->c->id, r->finals, q->started);
	}
	if (library_error(p->status_code) && r->keep_alive) {
		dump("received", r->c->got, r->c->got_len);
		violation("client %u: status %u without Connection: close",
			  r->c->id, p->status_code);
	}
	if (i >= MAX_REQS || i >= q->complete || !q->head[i])
		return 0;
	/* A response to HEAD has no body (http_parser cannot know); but an
	 * error the library answers to what it could not take as a request
	 * (http_parser's HTTP/0.9 form, say) may have one: it is the last
	 * response either way. */
	return library_error(p->status_code) ? 0 : 1;
}

static int resp_complete(http_parser *p)
{
	struct resps *r = p->data;

	if (p->status_code / 100 != 1)
		r->complete = true;
	return 0;
}

static void check_client(const struct client *c, bool timeouts)
{
	http_parser_settings s = {.on_headers_complete = resp_headers,
				  .on_message_complete = resp_complete};
	static struct reqs q;
	struct resps r = {.c = c, .reqs = &q, .complete = true};
	http_parser p;
	size_t n;
	bool cut = false;

	parse_requests(c, &q);
	if (c->got_total > c->got_len)
		return; /* more than it kept: nothing to say */
	http_parser_init(&p, HTTP_RESPONSE);
	p.data = &r;
	n = http_parser_execute(&p, &s, c->got, c->got_len);
	if (HTTP_PARSER_ERRNO(&p) != HPE_OK || n != c->got_len) {
		dump("sent", c->sent, c->sent_len);
		dump("received", c->got, c->got_len);
		violation("client %u: the server's bytes are not HTTP/1.1 "
			  "responses: %s at byte %zu",
			  c->id, http_errno_name(HTTP_PARSER_ERRNO(&p)), n);
	}
	/* The end of the connection ends a body read to EOF; it cuts any
	 * other response short. */
	http_parser_execute(&p, &s, NULL, 0);
	if (HTTP_PARSER_ERRNO(&p) != HPE_OK || !r.complete)
		cut = true;
	if (getenv("FUZZ_HTTP_DEBUG"))
		fprintf(stderr,
			"client %u: %u request(s) started, %u whole%s%s; %u "
			"response(s), the last %d%s%s%s\n",
			c->id, q.started, q.complete,
			q.error ? ", malformed" : "",
			q.upgrade ? ", upgrade" : "", r.finals, r.status,
			r.keep_alive ? "" : " (close)", cut ? ", cut" : "",
			c->went_away ? ", went away" : "");
	if (c->went_away || c->write_failed || q.error || q.upgrade || cut ||
	    timeouts)
		return; /* (a timeout may have come between two writes) */
	if (q.started != q.complete)
		return; /* a request left unfinished */
	if (r.finals && !r.keep_alive)
		return; /* the server said it would close */
	if (r.finals != q.complete) {
		dump("sent", c->sent, c->sent_len);
		dump("received", c->got, c->got_len);
		violation("client %u: %u whole request(s), %u response(s), and "
			  "the connection ended (%s)",
			  c->id, q.complete, r.finals,
			  c->eof ? "EOF" : keel_strerror(c->read_err));
	}
}

static void check_loop(struct world *w)
{
	struct keel_loop_stats st;

	keel_loop_stats(w->loop, &st);
	if (st.tasks_live || st.zombies || st.ops_inflight || st.timers_armed ||
	    st.bufs_in_use || st.frames_live)
		violation("at the end: %llu tasks, %llu zombies, %llu ops, "
			  "%llu timers, %llu buffers, %llu frames",
			  (unsigned long long)st.tasks_live,
			  (unsigned long long)st.zombies,
			  (unsigned long long)st.ops_inflight,
			  (unsigned long long)st.timers_armed,
			  (unsigned long long)st.bufs_in_use,
			  (unsigned long long)st.frames_live);
}

/* ---- the server ------------------------------------------------------ */

/*
 * The server makes its listener with keel_tcp_listen(), a real socket the
 * simulated kernel does not know: the link wraps it (-Wl,--wrap, see the
 * Makefile) and this hands over the machine's listener instead.
 */
static int g_sim_lfd = -1;

int __real_keel_tcp_listen(const char *host, uint16_t port, int backlog,
			   unsigned flags);
int __wrap_keel_tcp_listen(const char *host, uint16_t port, int backlog,
			   unsigned flags);

int __wrap_keel_tcp_listen(const char *host, uint16_t port, int backlog,
			   unsigned flags)
{
	int fd = g_sim_lfd;

	if (fd < 0)
		return __real_keel_tcp_listen(host, port, backlog, flags);
	g_sim_lfd = -1; /* the server owns it now */
	return fd;
}

static void add_routes(struct keel_http_server *srv)
{
	int err = 0;

	err |= keel_http_route_text(srv, "GET", "/hello", KEEL_HTTP_EXACT, 200,
				    "text/plain", "hello", 5);
	err |= keel_http_route_task(srv, NULL, "/echo", KEEL_HTTP_EXACT,
				    &echo_type, NULL);
	err |= keel_http_route_task(srv, "POST", "/all", KEEL_HTTP_PREFIX,
				    &all_type, NULL);
	err |= keel_http_route_task(srv, "GET", "/sleep", KEEL_HTTP_EXACT,
				    &sleep_type, NULL);
	err |= keel_http_route_task(srv, NULL, "/panic", KEEL_HTTP_EXACT,
				    &panic_type, NULL);
	err |= keel_http_route_task(srv, NULL, "/none", KEEL_HTTP_EXACT,
				    &none_type, NULL);
	err |= keel_http_route_task(srv, "GET", "/info", KEEL_HTTP_PREFIX,
				    &info_type, NULL);
	err |= keel_http_route_metrics(srv, "/metrics");
	err |= keel_http_route_health(srv, "/health");
	if (err)
		violation("a route was refused");
}

static void start_server(struct world *w, uint8_t flags, uint8_t more)
{
	struct keel_http_opts o = {
	    .host = "127.0.0.1",
	    .port = PORT,
	    .max_conns =
		w->nclients + flags % 8, /* flags % 8 == 0: at the cap */
	    .header_timeout_ns = 1 * SEC,
	    .body_timeout_ns = 1 * SEC,
	    .idle_timeout_ns = 2 * SEC,
	    .send_timeout_ns = 1 * SEC,
	    .drain_timeout_ns = 1 * SEC,
	    .bufs = 16,
	    .buf_size = flags & 0x10 ? 4096 : 256,
	};
	int err;

	if (more & 1) { /* an access log, to a file of the machine's */
		w->log_fd = keel_sim_file(w->sim, "/access.log", NULL, 0);
		if (w->log_fd < 0)
			violation("keel_sim_file: %s",
				  keel_strerror(w->log_fd));
		o.access_log_fd = w->log_fd;
	}
	if (flags & 0x20) { /* tight limits: the fuzzer reaches them */
		o.max_request_line = 64;
		o.max_header_bytes = 256;
		o.max_headers = 8;
		o.max_body = 64;
	}
	err = keel_http_server_new(&o, &w->srv);
	if (err)
		violation("keel_http_server_new: %s", keel_strerror(err));
	add_routes(w->srv);
	w->lfd = keel_sim_listen(w->sim, "127.0.0.1:8080", 16);
	if (w->lfd < 0)
		violation("keel_sim_listen: %s", keel_strerror(w->lfd));
	g_sim_lfd = w->lfd;
	err = keel_http_server_start_loop(w->srv, w->loop);
	if (err || g_sim_lfd >= 0)
		violation("keel_http_server_start_loop: %s",
			  err ? keel_strerror(err) : "made its own listener");
}

/* What the clients read: the same buffers for every input (mapping them
 * afresh each time costs more than the input). */
static char got_bufs[MAX_CLIENTS][GOT_CAP];

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct program pr = {data, size};
	struct keel_sim_opts so = {0};
	static struct world w;
	uint8_t flags, more;
	char why[256];
	int err;

	memset(&w, 0, sizeof(w));
	w.lfd = -1;
	w.log_fd = -1;
	so.seed = next_byte(&pr) | (uint64_t)next_byte(&pr) << 8;
	so.max_latency_ns = (uint64_t)next_byte(&pr) * 1000;
	so.short_ppm = (unsigned)(next_byte(&pr) % 4) * 100000;
	flags = next_byte(&pr);
	more = next_byte(&pr);
	w.nclients = 1 + (flags >> 6);
	if (keel_sim_create(&w.sim, &so))
		violation("keel_sim_create failed");
	err = keel_sim_loop_create(w.sim, &w.loop, NULL);
	if (err)
		violation("keel_sim_loop_create: %s", keel_strerror(err));
	keel_loop_set_stall(w.loop, 0, NULL, NULL);
	for (unsigned i = 0; i < w.nclients; i++) {
		struct client *c = &w.clients[i];

		c->w = &w;
		c->id = i;
		c->fd = -1;
		c->tail = &c->head;
		c->got = got_bufs[i];
	}
	start_server(&w, flags, more);
	struct setup *su = keel_spawn(w.loop, &fz_setup, KEEL_PRIO_NORMAL);

	if (!su)
		violation("keel_spawn: out of memory");
	su->w = &w;
	run(&w, 10 * MS);
	if (!w.setup_done)
		violation("the clients never connected");

	/*
	 * Records: a control byte; below 0xe0 a write on client ctl % n of
	 * the bytes up to the next 0xff; 0xe0..0xef let time pass; 0xf0..0xf7
	 * reset a client, 0xf8..0xfe close one; 0xff nothing.
	 */
	while (pr.n) {
		uint8_t ctl = next_byte(&pr);
		struct client *c = &w.clients[ctl % w.nclients];

		if (ctl < 0xe0) {
			const uint8_t *end = memchr(pr.p, 0xff, pr.n);
			size_t len = end ? (size_t)(end - pr.p) : pr.n;

			if (len && !c->went_away)
				queue(c, P_WRITE, pr.p, len);
			pr.p += len;
			pr.n -= len;
			if (pr.n)
				next_byte(&pr); /* the 0xff */
		} else if (ctl < 0xf0) {
			run(&w, (uint64_t)(ctl & 0xf) * 100 * MS + 1);
		} else if (ctl < 0xf8) {
			if (!c->went_away && c->fd >= 0) {
				c->went_away = true;
				keel_sim_reset(w.sim, c->fd);
			}
		} else if (ctl < 0xff) {
			if (!c->went_away) {
				c->went_away = true;
				queue(c, P_CLOSE, NULL, 0);
			}
		}
	}

	/* Past every timeout: the server must have closed every connection. */
	run(&w, 10 * SEC);
	for (unsigned i = 0; i < w.nclients; i++)
		if (w.clients[i].reader) {
			dump("sent", w.clients[i].sent, w.clients[i].sent_len);
			violation(
			    "client %u: the connection is still open 10 s "
			    "after the input's end",
			    i);
		}
	struct keel_http_stats hs;

	keel_http_server_stats(w.srv, &hs);
	for (unsigned i = 0; i < w.nclients; i++)
		check_client(&w.clients[i], hs.timeouts > 0);

	/* The end: close the clients, drain the server, run it out. */
	struct cleanup *cu = keel_spawn(w.loop, &fz_cleanup, KEEL_PRIO_NORMAL);

	if (!cu)
		violation("keel_spawn: out of memory");
	cu->w = &w;
	run(&w, 100 * MS);
	if (more & 2)
		keel_http_server_drain(w.srv);
	else
		keel_token_cancel(keel_loop_token(w.loop));
	err = keel_sim_run(w.sim, 60 * SEC);
	if (err)
		violation("the server does not wind down after a drain: %s",
			  keel_strerror(err));
	if (w.log_fd >= 0) { /* the server has let go of it */
		cu = keel_spawn(w.loop, &fz_cleanup, KEEL_PRIO_NORMAL);
		if (!cu)
			violation("keel_spawn: out of memory");
		cu->w = &w;
		cu->log = true;
		run(&w, 0);
	}
	check_loop(&w);
	keel_loop_destroy(w.loop);
	keel_http_server_free(w.srv);
	if (keel_sim_check(w.sim, why, sizeof(why)))
		violation("keel_sim_check: %s", why);
	keel_sim_destroy(w.sim);
	for (unsigned i = 0; i < w.nclients; i++) {
		struct client *c = &w.clients[i];

		while (c->head) {
			struct piece *p = c->head;

			c->head = p->next;
			free(p);
		}
		free(c->sent);
	}
	return 0;
}
