/* SPDX-License-Identifier: MIT */
/*
 * test_resolve.c: keel_resolve(). Numeric addresses answered on the loop's
 * thread; names on the blocking pool (localhost in each family, a name that
 * does not exist); the EAI_* to errno map and the one-line reasons; bad
 * requests; and the part that needs care: a cancel or a deadline ends the
 * await at once while getaddrinfo goes on, and the lookup is freed when it
 * returns, without touching the task or its loop (even a destroyed one);
 * and what a simulated kernel makes of it.
 *
 * getaddrinfo and freeaddrinfo are wrapped (-Wl,--wrap, see the Makefile):
 * names under .keel.test stand for a name server's answers without one
 * ("hang": blocks until the test opens a gate, then answers 127.0.0.1;
 * "nxdomain", "again", "system": those errors); any other name goes to the
 * real getaddrinfo. No test needs the network: a name server that cannot
 * be reached only turns "nonexistent.invalid" from EAI_NONAME to EAI_AGAIN.
 */
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <errno.h>
#include <keel.h>
#include <netdb.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "helpers/keel_test.h"

/* ---- the wrapped getaddrinfo ---------------------------------------- */

int __real_getaddrinfo(const char *host, const char *service,
		       const struct addrinfo *hints, struct addrinfo **res);
void __real_freeaddrinfo(struct addrinfo *ai);
int __wrap_getaddrinfo(const char *host, const char *service,
		       const struct addrinfo *hints, struct addrinfo **res);
void __wrap_freeaddrinfo(struct addrinfo *ai);

#define HANG_MAX 64

static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t g_cond = PTHREAD_COND_INITIALIZER;
static bool g_gate_open;
static struct addrinfo *g_hang_results[HANG_MAX];
static int g_hang_answered;  /* hang lookups returned (g_lock) */
static int g_hang_freed;     /* ... whose answer was freed (g_lock) */
static int g_hanging;	     /* blocked at the gate now */
static int g_resolver_calls; /* lookups that were not numeric-only */
static pthread_t g_test_thread;

static bool is(const char *host, const char *name)
{
	return host && !strcmp(host, name);
}

int __wrap_getaddrinfo(const char *host, const char *service,
		       const struct addrinfo *hints, struct addrinfo **res)
{
	if (hints && (hints->ai_flags & AI_NUMERICHOST))
		return __real_getaddrinfo(host, service, hints, res);
	kt_add(&g_resolver_calls, 1);
	/* The pool's threads ask; the loop's never blocks on a name. */
	CHECK(!pthread_equal(pthread_self(), g_test_thread));
	if (is(host, "nxdomain.keel.test"))
		return EAI_NONAME;
	if (is(host, "again.keel.test"))
		return EAI_AGAIN;
	if (is(host, "system.keel.test")) {
		errno = EMFILE;
		return EAI_SYSTEM;
	}
	if (!is(host, "hang.keel.test"))
		return __real_getaddrinfo(host, service, hints, res);
	pthread_mutex_lock(&g_lock);
	g_hanging++;
	while (!g_gate_open)
		pthread_cond_wait(&g_cond, &g_lock);
	g_hanging--;
	pthread_mutex_unlock(&g_lock);
	int gai = __real_getaddrinfo("127.0.0.1", service, hints, res);

	pthread_mutex_lock(&g_lock);
	if (!gai && g_hang_answered < HANG_MAX)
		g_hang_results[g_hang_answered] = *res;
	g_hang_answered++;
	pthread_mutex_unlock(&g_lock);
	return gai;
}

void __wrap_freeaddrinfo(struct addrinfo *ai)
{
	pthread_mutex_lock(&g_lock);
	for (int i = 0; i < g_hang_answered && i < HANG_MAX; i++)
		if (g_hang_results[i] == ai) {
			g_hang_results[i] = NULL;
			g_hang_freed++;
		}
	pthread_mutex_unlock(&g_lock);
	__real_freeaddrinfo(ai);
}

static int locked_read(const int *p)
{
	pthread_mutex_lock(&g_lock);
	int v = *p;

	pthread_mutex_unlock(&g_lock);
	return v;
}

static void gate_open(void)
{
	pthread_mutex_lock(&g_lock);
	g_gate_open = true;
	pthread_cond_broadcast(&g_cond);
	pthread_mutex_unlock(&g_lock);
}

/* Wait (bounded, to catch a hang) until *p under g_lock reaches `want`. */
static bool wait_for(const int *p, int want)
{
	for (int i = 0; i < 5000; i++) {
		if (locked_read(p) >= want)
			return true;
		nanosleep(&(struct timespec){0, 1000 * 1000}, NULL);
	}
	return false;
}

static void setup(void)
{
	g_test_thread = pthread_self();
	/* A name server that cannot be reached gives up soon. */
	setenv("RES_OPTIONS", "timeout:1 attempts:1", 1);
}

TestSuite(resolve, .init = setup);

/* ---- a task that resolves once -------------------------------------- */

/* What a resolver saw; outside its frame, which is freed as it exits. */
struct resolver {
	struct keel_task *task; /* while !done */
	struct keel_resolve_req req;
	uint64_t op_timeout; /* keel_op_timeout() before it, if set */
	int ret;	     /* what keel_resolve() returned */
	int res;
	bool done;
	uint64_t took_ns;
};

static struct resolver g_resolvers[128];
static int g_nresolvers;

struct resolver_frame {
	struct keel_task task;
	struct resolver *r;
	struct keel_resolve_req req;
	uint64_t start;
};

static int resolver_step(struct keel_task *t);
static KEEL_TASK_TYPE(resolver_task, struct resolver_frame, task,
		      resolver_step);

static int resolver_step(struct keel_task *t)
{
	struct resolver_frame *f =
	    keel_container_of(t, struct resolver_frame, task);

	KEEL_BEGIN(t);
	f->req = f->r->req;
	f->start = kt_now_ns();
	if (f->r->op_timeout)
		keel_op_timeout(t, f->r->op_timeout);
	KEEL_AWAIT(t, (f->r->ret = keel_resolve(t, &f->req)));
	f->r->res = keel_res(t);
	f->r->took_ns = kt_now_ns() - f->start;
	f->r->req = f->req;
	/* The task is usable after it (a cancel stays, level-triggered). */
	KEEL_AWAIT(t, keel_nop(t));
	CHECK_EQ(keel_res(t), f->r->res == -ECANCELED ? -ECANCELED : 0);
	f->r->done = true;
	f->r->task = NULL;
	KEEL_END(t);
}

/* A resolver, spawned; set more of its request before the loop runs. */
static struct resolver *resolver_new(struct keel_loop *loop, const char *host,
				     const char *service, int family)
{
	cr_assert_lt(g_nresolvers, 128);
	struct resolver *r = &g_resolvers[g_nresolvers++];
	struct resolver_frame *f =
	    kt_spawn(loop, &resolver_task, KEEL_PRIO_NORMAL);

	memset(r, 0, sizeof(*r));
	r->task = &f->task;
	r->req.host = host;
	r->req.service = service;
	r->req.family = family;
	r->res = 1 << 30;
	f->r = r;
	return r;
}

/* Resolve once on a loop of its own; the result is in *out. */
static int resolve_once(const char *host, const char *service, int family,
			struct keel_resolve_req *out, int *ret)
{
	struct keel_loop *loop = kt_loop_new(NULL);
	struct resolver *r = resolver_new(loop, host, service, family);

	kt_loop_run(loop);
	cr_assert(r->done);
	kt_expect_no_failures();
	keel_loop_destroy(loop);
	*out = r->req;
	if (ret)
		*ret = r->ret;
	return r->res;
}

static uint16_t port_of(const struct sockaddr_storage *ss)
{
	if (ss->ss_family == AF_INET)
		return ntohs(((const struct sockaddr_in *)ss)->sin_port);
	return ntohs(((const struct sockaddr_in6 *)ss)->sin6_port);
}

static bool is_loopback(const struct sockaddr_storage *ss)
{
	if (ss->ss_family == AF_INET)
		return (ntohl(((const struct sockaddr_in *)ss)
				  ->sin_addr.s_addr) >>
			24) == 127;
	if (ss->ss_family == AF_INET6)
		return IN6_IS_ADDR_LOOPBACK(
		    &((const struct sockaddr_in6 *)ss)->sin6_addr);
	return false;
}

/* ---- numeric, at once ------------------------------------------------ */

Test(resolve, numeric_ipv4_is_answered_at_once_without_the_pool, .timeout = 10)
{
	struct keel_resolve_req req;
	int ret, res = resolve_once("127.0.0.1", "8080", AF_UNSPEC, &req, &ret);

	cr_assert_eq(res, 1, "res %d (%s)", res,
		     keel_resolve_strerror(&req, res));
	cr_assert_eq(ret, KEEL_READY);
	cr_assert_eq(req.count, 1);
	cr_assert_eq(req.lens[0], sizeof(struct sockaddr_in));
	cr_assert_eq(req.addrs[0].ss_family, AF_INET);
	cr_assert_eq(port_of(&req.addrs[0]), 8080);
	cr_assert(is_loopback(&req.addrs[0]));
	cr_assert_eq(kt_load(&g_resolver_calls), 0);
	cr_assert_str_eq(keel_resolve_strerror(&req, res), "ok");
}

Test(resolve, numeric_ipv6_is_answered_at_once_without_the_pool, .timeout = 10)
{
	struct keel_resolve_req req;
	int ret, res = resolve_once("::1", NULL, AF_INET6, &req, &ret);

	cr_assert_eq(res, 1);
	cr_assert_eq(ret, KEEL_READY);
	cr_assert_eq(req.lens[0], sizeof(struct sockaddr_in6));
	cr_assert_eq(req.addrs[0].ss_family, AF_INET6);
	cr_assert_eq(port_of(&req.addrs[0]), 0);
	cr_assert(is_loopback(&req.addrs[0]));
	cr_assert_eq(kt_load(&g_resolver_calls), 0);
}

Test(resolve, numeric_address_of_the_other_family_fails, .timeout = 10)
{
	struct keel_resolve_req req;
	int res = resolve_once("127.0.0.1", "80", AF_INET6, &req, NULL);

	cr_assert(res == -ENOENT, "res %d", res);
	cr_assert_eq(req.count, 0);
}

Test(resolve, numeric_host_with_a_service_name_goes_to_the_pool, .timeout = 10)
{
	struct keel_resolve_req req;
	int ret, res = resolve_once("127.0.0.1", "nosuchservice-keel", AF_INET,
				    &req, &ret);

	cr_assert_eq(ret, KEEL_PENDING);
	cr_assert_eq(kt_load(&g_resolver_calls), 1);
	cr_assert_eq(res, -EINVAL, "res %d", res);
	cr_assert_eq(req.gai_error, EAI_SERVICE);
	cr_assert_str_eq(keel_resolve_strerror(&req, res),
			 "unknown service or port (EAI_SERVICE)");
}

Test(resolve, port_out_of_range_is_einval, .timeout = 10)
{
	struct keel_resolve_req req;
	int res = resolve_once("127.0.0.1", "70000", AF_INET, &req, NULL);

	cr_assert_eq(res, -EINVAL, "res %d", res);
	cr_assert_eq(req.gai_error, EAI_SERVICE);
}

/* ---- names, on the pool ---------------------------------------------- */

Test(resolve, localhost_ipv4_on_the_pool, .timeout = 10)
{
	struct keel_resolve_req req;
	int ret, res = resolve_once("localhost", "5432", AF_INET, &req, &ret);

	cr_assert_eq(ret, KEEL_PENDING);
	cr_assert_eq(kt_load(&g_resolver_calls), 1);
	cr_assert_geq(res, 1, "res %d (%s)", res,
		      keel_resolve_strerror(&req, res));
	cr_assert_eq((unsigned)res, req.count);
	for (unsigned i = 0; i < req.count; i++) {
		cr_assert_eq(req.addrs[i].ss_family, AF_INET);
		cr_assert_eq(req.lens[i], sizeof(struct sockaddr_in));
		cr_assert_eq(port_of(&req.addrs[i]), 5432);
		cr_assert(is_loopback(&req.addrs[i]));
	}
}

/* Whether localhost has an IPv6 address is the machine's /etc/hosts: ::1
 * if it has one, -ENOENT if not; never an IPv4 address. */
Test(resolve, localhost_ipv6_is_loopback_or_none, .timeout = 10)
{
	struct keel_resolve_req req;
	int res = resolve_once("localhost", "80", AF_INET6, &req, NULL);

	cr_assert(res >= 1 || res == -ENOENT, "res %d (%s)", res,
		  keel_resolve_strerror(&req, res));
	for (unsigned i = 0; i < req.count; i++) {
		cr_assert_eq(req.addrs[i].ss_family, AF_INET6);
		cr_assert(is_loopback(&req.addrs[i]));
	}
}

/* Either family: each address once (getaddrinfo gives one per socket type
 * without one, and /etc/hosts may list an address twice). */
Test(resolve, localhost_any_family_each_address_once, .timeout = 10)
{
	struct keel_resolve_req req;
	int res = resolve_once("localhost", NULL, AF_UNSPEC, &req, NULL);

	cr_assert_geq(res, 1);
	for (unsigned i = 0; i < req.count; i++) {
		cr_assert(is_loopback(&req.addrs[i]));
		for (unsigned j = 0; j < i; j++)
			cr_assert(
			    req.lens[i] != req.lens[j] ||
			    memcmp(&req.addrs[i], &req.addrs[j], req.lens[i]));
	}
}

Test(resolve, a_name_that_does_not_exist, .timeout = 20)
{
	struct keel_resolve_req req;
	int res =
	    resolve_once("nonexistent.invalid", "80", AF_UNSPEC, &req, NULL);

	/* NXDOMAIN from a name server; EAI_AGAIN when none answers. */
	cr_assert(res == -ENOENT || res == -EAGAIN, "res %d", res);
	cr_assert(req.gai_error == EAI_NONAME || req.gai_error == EAI_AGAIN,
		  "gai %d", req.gai_error);
	cr_assert_eq(req.count, 0);
}

Test(resolve, name_server_errors_map_to_errnos_and_reasons, .timeout = 10)
{
	static const struct {
		const char *host;
		int res, gai;
		const char *why;
	} cases[] = {
	    {"nxdomain.keel.test", -ENOENT, EAI_NONAME,
	     "name does not resolve (EAI_NONAME)"},
	    {"again.keel.test", -EAGAIN, EAI_AGAIN,
	     "name server failed for now or did not answer (EAI_AGAIN)"},
	    {"system.keel.test", -EMFILE, EAI_SYSTEM,
	     "system error (EAI_SYSTEM)"},
	};

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct keel_resolve_req req;
		int res =
		    resolve_once(cases[i].host, "80", AF_UNSPEC, &req, NULL);

		cr_assert_eq(res, cases[i].res, "%s: %d", cases[i].host, res);
		cr_assert_eq(req.gai_error, cases[i].gai);
		cr_assert_str_eq(keel_resolve_strerror(&req, res),
				 cases[i].why);
	}
}

Test(resolve, bad_requests_fail_at_once, .timeout = 10)
{
	struct keel_resolve_req req;
	int ret, res;

	res = resolve_once(NULL, "80", AF_UNSPEC, &req, &ret);
	cr_assert_eq(res, -EINVAL);
	cr_assert_eq(ret, KEEL_READY);
	cr_assert_str_eq(keel_resolve_strerror(&req, res), "no host name");
	res = resolve_once("", "80", AF_UNSPEC, &req, &ret);
	cr_assert_eq(res, -EINVAL);
	res = resolve_once("localhost", "80", AF_UNIX, &req, &ret);
	cr_assert_eq(res, -EAFNOSUPPORT);
	cr_assert_eq(ret, KEEL_READY);
	cr_assert_eq(kt_load(&g_resolver_calls), 0);
}

/* ---- deadlines and cancels: the await ends, the lookup goes on ------- */

/* Run the loop until every resolver in `rs` is done (no loop_run: a
 * lookup left behind must not keep it alive, and it does not). */
static void run_until_done(struct keel_loop *loop, struct resolver **rs, int n)
{
	for (;;) {
		bool all = true;

		for (int i = 0; i < n; i++)
			all = all && rs[i]->done;
		if (all)
			return;
		cr_assert_geq(keel_loop_step(loop, -1), 0);
	}
}

/* Start the tasks (their deadlines run from now) and wait, without a
 * turn of the loop, so that no deadline can pass, until a lookup is in
 * getaddrinfo: a pool slow to start must not leave it queued. */
static void start_hanging(struct keel_loop *loop)
{
	cr_assert_geq(keel_loop_step(loop, 0), 0);
	cr_assert(wait_for(&g_hanging, 1));
}

Test(resolve, deadline_ends_the_await_while_getaddrinfo_hangs, .timeout = 10)
{
	struct keel_loop *loop = kt_loop_new(NULL);
	struct resolver *r =
	    resolver_new(loop, "hang.keel.test", "80", AF_UNSPEC);

	r->req.timeout_ns = KT_MS(50);
	start_hanging(loop);
	run_until_done(loop, &r, 1);
	cr_assert_eq(r->res, -ETIMEDOUT, "res %d", r->res);
	cr_assert_eq(r->ret, KEEL_PENDING);
	cr_assert_eq(r->req.count, 0);
	cr_assert_str_eq(keel_resolve_strerror(&r->req, r->res), "timed out");
	/* getaddrinfo is still blocked: the await did not wait for it. */
	cr_assert_eq(locked_read(&g_hanging), 1);
	kt_loop_run(loop); /* the lookup left behind does not hold it */
	struct keel_loop_stats st = kt_stats(loop);

	cr_assert_eq(st.ops_inflight, 0);
	cr_assert_eq(st.tasks_live, 0);
	gate_open();
	cr_assert(wait_for(&g_hang_freed, 1), "the lookup was not freed");
	kt_loop_run(loop);
	kt_expect_no_failures();
	keel_loop_destroy(loop);
}

Test(resolve, op_timeout_applies_and_the_earlier_deadline_wins, .timeout = 10)
{
	struct keel_loop *loop = kt_loop_new(NULL);
	struct resolver *r =
	    resolver_new(loop, "hang.keel.test", "80", AF_UNSPEC);

	r->req.timeout_ns = 60ull * 1000 * 1000 * 1000;
	r->op_timeout = KT_MS(30);
	start_hanging(loop);
	run_until_done(loop, &r, 1);
	cr_assert_eq(r->res, -ETIMEDOUT, "res %d", r->res);
	cr_assert_lt(r->took_ns, 30ull * 1000 * 1000 * 1000);
	gate_open();
	cr_assert(wait_for(&g_hang_freed, 1));
	kt_loop_run(loop);
	kt_expect_no_failures();
	keel_loop_destroy(loop);
}

struct canceller {
	struct keel_task task;
	struct resolver *target;
	int i;
};

static int canceller_step(struct keel_task *t);
static KEEL_TASK_TYPE(canceller_task, struct canceller, task, canceller_step);

/* Cancel the target once its getaddrinfo is blocked at the gate. */
static int canceller_step(struct keel_task *t)
{
	struct canceller *c = keel_container_of(t, struct canceller, task);

	KEEL_BEGIN(t);
	for (c->i = 0; locked_read(&g_hanging) < 1 && c->i < 5000; c->i++)
		KEEL_AWAIT(t, keel_sleep(t, KT_MS(1)));
	CHECK_EQ(locked_read(&g_hanging), 1);
	CHECK(!c->target->done);
	keel_task_cancel(c->target->task);
	KEEL_END(t);
}

Test(resolve, cancel_ends_the_await_at_once, .timeout = 10)
{
	struct keel_loop *loop = kt_loop_new(NULL);
	struct resolver *r =
	    resolver_new(loop, "hang.keel.test", "80", AF_UNSPEC);
	struct canceller *c = kt_spawn(loop, &canceller_task, KEEL_PRIO_NORMAL);

	c->target = r;
	run_until_done(loop, &r, 1);
	cr_assert_eq(r->res, -ECANCELED, "res %d", r->res);
	cr_assert_str_eq(keel_resolve_strerror(&r->req, r->res), "cancelled");
	cr_assert_eq(locked_read(&g_hanging), 1);
	kt_loop_run(loop);
	gate_open();
	cr_assert(wait_for(&g_hang_freed, 1));
	kt_loop_run(loop);
	kt_expect_no_failures();
	keel_loop_destroy(loop);
}

/* A token deadline is a cancel whose cause is -ETIMEDOUT. */
static int g_scoped_res = 1 << 30;
static bool g_scoped_done;

struct scoped {
	struct keel_task task;
	struct keel_resolve_req req;
};

static int scoped_step(struct keel_task *t);
static KEEL_TASK_TYPE(scoped_task, struct scoped, task, scoped_step);

static int scoped_step(struct keel_task *t)
{
	struct scoped *s = keel_container_of(t, struct scoped, task);

	KEEL_BEGIN(t);
	KEEL_AWAIT(t, keel_resolve(t, &s->req));
	g_scoped_res = keel_res(t);
	g_scoped_done = true;
	KEEL_END(t);
}

Test(resolve, token_deadline_gives_etimedout, .timeout = 10)
{
	struct keel_loop *loop = kt_loop_new(NULL);
	struct keel_token *tok;
	struct scoped *s = kt_spawn(loop, &scoped_task, KEEL_PRIO_NORMAL);

	cr_assert_eq(keel_token_new(loop, NULL, &tok), 0);
	cr_assert_eq(keel_task_set_token(&s->task, tok), 0);
	cr_assert_eq(keel_token_set_timeout(tok, KT_MS(30)), 0);
	s->req.host = "hang.keel.test";
	start_hanging(loop);
	while (!g_scoped_done)
		cr_assert_geq(keel_loop_step(loop, -1), 0);
	cr_assert_eq(g_scoped_res, -ETIMEDOUT, "res %d", g_scoped_res);
	kt_loop_run(loop);
	keel_token_release(tok);
	gate_open();
	cr_assert(wait_for(&g_hang_freed, 1));
	kt_expect_no_failures();
	keel_loop_destroy(loop);
}

/* The loop is destroyed while getaddrinfo hangs: destroy does not wait for
 * it, and the lookup, freed later, touches nothing of the loop. */
Test(resolve, loop_destroyed_while_getaddrinfo_hangs, .timeout = 10)
{
	struct keel_loop *loop = kt_loop_new(NULL);
	struct resolver *r =
	    resolver_new(loop, "hang.keel.test", "80", AF_UNSPEC);

	(void)r;
	while (locked_read(&g_hanging) < 1)
		cr_assert_geq(keel_loop_step(loop, 1000 * 1000), 0);
	keel_loop_destroy(loop);
	cr_assert_eq(locked_read(&g_hanging), 1);
	gate_open();
	cr_assert(wait_for(&g_hang_freed, 1));
	kt_expect_no_failures();
}

/* One pool thread, a queue of 2: the first lookup hangs on the thread, two
 * wait in the queue, the rest get -EAGAIN at once. Cancelled, the queued
 * ones are dropped without running; the running one is freed later. */
Test(resolve, full_queue_gives_eagain_and_cancel_drops_queued, .timeout = 10)
{
	enum { N = 8 };
	struct keel_loop *loop;
	struct resolver *rs[N];

	cr_assert_eq(keel_blocking_pool_config(1, 2), 0);
	loop = kt_loop_new(NULL);
	rs[0] = resolver_new(loop, "hang.keel.test", "80", AF_UNSPEC);
	while (locked_read(&g_hanging) < 1)
		cr_assert_geq(keel_loop_step(loop, 1000 * 1000), 0);
	for (int i = 1; i < N; i++)
		rs[i] = resolver_new(loop, "hang.keel.test", "80", AF_UNSPEC);
	while (!rs[N - 1]->done)
		cr_assert_geq(keel_loop_step(loop, 1000 * 1000), 0);
	for (int i = 3; i < N; i++) {
		cr_assert_eq(rs[i]->res, -EAGAIN, "%d: %d", i, rs[i]->res);
		cr_assert_eq(rs[i]->req.gai_error, 0);
		cr_assert_str_eq(keel_resolve_strerror(&rs[i]->req, -EAGAIN),
				 "blocking pool's queue is full");
	}
	for (int i = 0; i < 3; i++) {
		cr_assert(!rs[i]->done);
		keel_task_cancel(rs[i]->task);
	}
	run_until_done(loop, rs, N);
	for (int i = 0; i < 3; i++)
		cr_assert_eq(rs[i]->res, -ECANCELED);
	kt_loop_run(loop);
	gate_open();
	cr_assert(wait_for(&g_hang_freed, 1));
	/* The two queued lookups never reached getaddrinfo. */
	nanosleep(&(struct timespec){0, 20 * 1000 * 1000}, NULL);
	cr_assert_eq(kt_load(&g_resolver_calls), 1);
	cr_assert_eq(locked_read(&g_hang_answered), 1);
	kt_expect_no_failures();
	keel_loop_destroy(loop);
}

/* Many lookups at once on the default pool: each gets its own answer. */
Test(resolve, many_concurrent_lookups, .timeout = 20)
{
	enum { N = 64 };
	struct keel_loop *loop = kt_loop_new(NULL);
	struct resolver *rs[N];
	char ports[N][8];

	for (int i = 0; i < N; i++) {
		snprintf(ports[i], sizeof(ports[i]), "%d", 1000 + i);
		rs[i] = resolver_new(loop, i % 2 ? "localhost" : "127.0.0.1",
				     ports[i], AF_INET);
	}
	run_until_done(loop, rs, N);
	for (int i = 0; i < N; i++) {
		cr_assert_geq(rs[i]->res, 1, "%d: %d", i, rs[i]->res);
		cr_assert_eq(port_of(&rs[i]->req.addrs[0]), 1000 + i);
		cr_assert(is_loopback(&rs[i]->req.addrs[0]));
	}
	kt_loop_run(loop);
	kt_expect_no_failures();
	keel_loop_destroy(loop);
}

/* Under an already-cancelled token nothing is queued. */
Test(resolve, cancelled_before_it_starts, .timeout = 10)
{
	struct keel_loop *loop = kt_loop_new(NULL);
	struct keel_token *tok;
	struct scoped *s = kt_spawn(loop, &scoped_task, KEEL_PRIO_NORMAL);

	cr_assert_eq(keel_token_new(loop, NULL, &tok), 0);
	cr_assert_eq(keel_task_set_token(&s->task, tok), 0);
	keel_token_cancel(tok);
	s->req.host = "hang.keel.test";
	kt_loop_run(loop);
	cr_assert(g_scoped_done);
	cr_assert_eq(g_scoped_res, -ECANCELED);
	cr_assert_eq(kt_load(&g_resolver_calls), 0);
	keel_token_release(tok);
	kt_expect_no_failures();
	keel_loop_destroy(loop);
}

/* On the simulated kernel a numeric address is answered as on the real
 * one; a name's deadline passes in virtual time, long before the real
 * getaddrinfo on the pool can answer (here it never does until the end). */
Test(resolve, on_the_simulated_kernel, .timeout = 10)
{
	struct keel_sim *sim;
	struct keel_loop *loop;

	cr_assert_eq(keel_sim_create(&sim, NULL), 0);
	cr_assert_eq(keel_sim_loop_create(sim, &loop, NULL), 0);

	struct resolver *num = resolver_new(loop, "10.0.0.7", "5432", AF_INET);
	struct resolver *name =
	    resolver_new(loop, "hang.keel.test", "5432", AF_UNSPEC);

	name->req.timeout_ns = 60ull * 1000 * 1000 * 1000;
	/* The tasks start; the lookup reaches getaddrinfo (real time). */
	cr_assert_eq(keel_sim_run(sim, 1000), -ETIME);
	cr_assert(wait_for(&g_hanging, 1));
	cr_assert_eq(keel_sim_run(sim, 0), 0);
	cr_assert(num->done && name->done);
	cr_assert_eq(num->res, 1);
	cr_assert_eq(num->ret, KEEL_READY);
	cr_assert_eq(port_of(&num->req.addrs[0]), 5432);
	cr_assert_eq(name->res, -ETIMEDOUT);
	cr_assert_geq(keel_sim_now(sim), 60ull * 1000 * 1000 * 1000);
	keel_loop_destroy(loop);
	keel_sim_destroy(sim);
	gate_open();
	cr_assert(wait_for(&g_hang_freed, 1));
	kt_expect_no_failures();
}
