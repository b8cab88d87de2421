/* SPDX-License-Identifier: MIT */
/*
 * select_wait.c: select over several waits of one task (keel/select.h):
 * arming the branches, deciding the winner, undoing the losers.
 *
 * It lives in the io layer because an op branch is a ledger op; the
 * mailbox and join branches use hooks of core (keel__mb_select_*,
 * keel__join_select_check) and tell the select through the task's
 * ext->select_wake instead of completing the task.
 *
 * The first branch to fire wins, and the winner undoes the others at once,
 * on the loop's thread, before anything else can fire: a losing mailbox
 * stops being received from before a message could be taken, a losing
 * join before the child's exit is delivered. Only the op branches cannot
 * be undone at once: they are cancelled, and the select completes its task
 * when the kernel has returned the last of them (phase DECIDED), keeping
 * each loser's real result. A task is thus never woken while any branch
 * is still armed, and its frame's buffers are its own again when the
 * await returns.
 */
#include "io.h"

#include <errno.h>
#include <keel/select.h>

enum {
	SEL_NONE,
	SEL_RECV,
	SEL_OP,
	SEL_TIMER,
	SEL_JOIN,
	SEL_TOKEN,
};

/* A branch's state. */
enum { B_IDLE, B_ARMED, B_DONE };

/* A select's phase. */
enum {
	P_IDLE,	   /* not awaited */
	P_ARMING,  /* inside keel_select(): arming the branches */
	P_WAITING, /* armed, no winner yet */
	P_DECIDED, /* a winner (or a cancel); ops still in the kernel */
};

/* Rotating start for fair choice: one splitmix64 stream per thread, so a
 * simulated run is the same every time. */
static __thread uint64_t fair_state;

void keel_select_init(struct keel_select *s, struct keel_task *t,
		      unsigned flags)
{
	s->task = t;
	s->flags = flags;
	s->err = 0;
	s->n = 0;
	s->phase = P_IDLE;
	s->ops_out = 0;
	s->external = 0;
	s->winner = -EINVAL;
}

static struct keel_select_branch *add(struct keel_select *s, int kind, int *i)
{
	if (s->n >= KEEL_SELECT_MAX) {
		s->err = -E2BIG;
		*i = -E2BIG;
		return NULL;
	}
	*i = s->n;
	struct keel_select_branch *b = &s->b[s->n++];

	b->sel = s;
	b->kind = (uint8_t)kind;
	b->state = B_IDLE;
	b->res = -ECANCELED;
	return b;
}

int keel_select_recv(struct keel_select *s, struct keel_mailbox *mb, void **out)
{
	int i;
	struct keel_select_branch *b = add(s, SEL_RECV, &i);

	if (b) {
		b->u.recv.mb = mb;
		b->u.recv.out = out;
	}
	return i;
}

int keel_select_op(struct keel_select *s, keel_select_start_fn start, void *arg)
{
	int i;
	struct keel_select_branch *b = add(s, SEL_OP, &i);

	if (b) {
		b->u.op.start = start;
		b->u.op.arg = arg;
		b->u.op.op = 0;
	}
	return i;
}

int keel_select_deadline(struct keel_select *s, uint64_t deadline_ns)
{
	int i;
	struct keel_select_branch *b = add(s, SEL_TIMER, &i);

	if (b)
		b->u.timer.deadline = deadline_ns;
	return i;
}

int keel_select_timeout(struct keel_select *s, uint64_t ns)
{
	uint64_t now = keel__clock_now();

	return keel_select_deadline(s, ns > UINT64_MAX - now ? UINT64_MAX
							     : now + ns);
}

int keel_select_join(struct keel_select *s, struct keel_task *child)
{
	int i;
	struct keel_select_branch *b = add(s, SEL_JOIN, &i);

	if (b)
		b->u.join.child = child;
	return i;
}

int keel_select_token(struct keel_select *s, struct keel_token *tok)
{
	int i;
	struct keel_select_branch *b = add(s, SEL_TOKEN, &i);

	if (b)
		b->u.token.tok = tok;
	return i;
}

/* Undo an armed branch that lost (an op: ask the kernel to cancel it). */
static void disarm(struct keel_select *s, struct keel_select_branch *b)
{
	struct keel_task *t = s->task;

	if (b->state != B_ARMED)
		return;
	switch (b->kind) {
	case SEL_RECV:
		keel__mb_select_disarm(b->u.recv.mb, t);
		break;
	case SEL_OP: {
		struct keel__io *io = keel__io_of(t->loop);

		/* Stays armed: the kernel's answer ends it. */
		keel__op_send_cancel(io,
				     keel__op_at(&io->ledger, b->u.op.op - 1));
		return;
	}
	case SEL_TIMER:
		keel_timer_cancel(t->loop, &b->u.timer.timer);
		break;
	case SEL_JOIN:
		b->u.join.child->joiner = NULL;
		break;
	case SEL_TOKEN:
		keel_token_cb_remove(&b->u.token.cb);
		break;
	}
	b->state = B_IDLE;
}

/* The select is over: the task leaves it, with keel_res = the outcome. */
static void leave(struct keel_select *s)
{
	struct keel_task *t = s->task;

	t->flags &= (uint8_t)~KEEL__T_SELECT;
	t->ext->select = NULL;
	t->ext->select_wake = NULL;
	t->ext->wait_cancel = NULL;
	s->phase = P_IDLE;
}

static void finish(struct keel_select *s)
{
	struct keel_task *t = s->task;

	leave(s);
	keel__task_complete(t, s->winner);
}

/* Decide: `winner` is a branch index or a negative errno (t cancelled). */
static void decide(struct keel_select *s, int winner)
{
	s->winner = winner;
	s->phase = P_DECIDED;
	for (unsigned i = 0; i < s->n; i++)
		disarm(s, &s->b[i]);
	/* While arming, keel_select() itself returns the outcome. */
	if (!s->ops_out && s->phase == P_DECIDED &&
	    (s->task->flags & KEEL__T_WAITING))
		finish(s);
}

static void win(struct keel_select_branch *b, int res)
{
	struct keel_select *s = b->sel;

	b->state = B_DONE;
	b->res = res;
	decide(s, (int)(b - s->b));
}

/* A mailbox delivered or a child exited (core's select_wake). */
static void select_wake(struct keel_task *t, void *what, int res)
{
	struct keel_select *s = t->ext->select;

	for (unsigned i = 0; i < s->n; i++) {
		struct keel_select_branch *b = &s->b[i];

		if (b->state != B_ARMED)
			continue;
		if ((b->kind == SEL_RECV && b->u.recv.mb == what) ||
		    (b->kind == SEL_JOIN && b->u.join.child == what)) {
			win(b, res);
			return;
		}
	}
}

static void timer_fired(struct keel_loop *loop, struct keel_timer *timer,
			void *arg)
{
	struct keel_select_branch *b = arg;

	(void)loop;
	(void)timer;
	win(b, 0);
}

static void token_fired(struct keel_token *tok, int cause, void *arg)
{
	struct keel_select_branch *b = arg;

	(void)tok;
	win(b, cause);
}

bool keel__select_op_done(struct keel_task *t, uint32_t op, int res)
{
	struct keel_select *s = t->ext->select;

	for (unsigned i = 0; i < s->n; i++) {
		struct keel_select_branch *b = &s->b[i];

		if (b->kind != SEL_OP || b->state != B_ARMED ||
		    b->u.op.op != op)
			continue;
		b->state = B_DONE;
		b->res = res;
		b->u.op.op = 0;
		s->ops_out--;
		if (s->phase == P_DECIDED) {
			if (!s->ops_out && (t->flags & KEEL__T_WAITING))
				finish(s);
		} else {
			decide(s, (int)i);
		}
		return true;
	}
	return false;
}

/* t's token was cancelled (its ops are being cancelled already). */
static void select_cancelled(struct keel_task *t)
{
	struct keel_select *s = t->ext->select;

	t->ext->wait_cancel = NULL;
	if (s->phase == P_WAITING)
		decide(s, keel__task_cancel_cause(t));
}

/* A branch ready at once, without arming it: 1 (it won), 0, or -errno. */
static int try_now(struct keel_select *s, struct keel_select_branch *b)
{
	int r, status;

	switch (b->kind) {
	case SEL_RECV:
		r = keel__mb_select_take(b->u.recv.mb, b->u.recv.out);
		if (r == -EAGAIN)
			return 0;
		if (r == -EBUSY)
			return r;
		b->res = r;
		return 1;
	case SEL_TIMER:
		if (b->u.timer.deadline > keel__clock_now())
			return 0;
		b->res = 0;
		return 1;
	case SEL_JOIN:
		r = keel__join_select_check(s->task, b->u.join.child, &status);
		if (r == 1)
			b->res = status;
		return r;
	case SEL_TOKEN:
		r = keel_token_cause(b->u.token.tok);
		if (!r)
			return 0;
		b->res = r;
		return 1;
	}
	return 0;
}

/* Arm a branch other than an op: 0 or -errno. */
static int arm(struct keel_select *s, struct keel_select_branch *b)
{
	struct keel_task *t = s->task;
	int r = 0;

	switch (b->kind) {
	case SEL_RECV:
		r = keel__mb_select_arm(t, b->u.recv.mb, b->u.recv.out);
		s->external = 1;
		break;
	case SEL_TIMER:
		keel_timer_init(&b->u.timer.timer, timer_fired, b);
		r = keel_timer_arm(t->loop, &b->u.timer.timer,
				   b->u.timer.deadline);
		break;
	case SEL_JOIN:
		b->u.join.child->joiner = t;
		break;
	case SEL_TOKEN:
		keel_token_on_cancel(b->u.token.tok, &b->u.token.cb,
				     token_fired, b);
		break;
	}
	if (!r)
		b->state = B_ARMED;
	return r;
}

/*
 * Start an op branch. Its start must start one op: it then returns
 * KEEL_PENDING with the op in flight (t's newest), or KEEL_READY when the
 * op ended at once (refused, or under a cancelled token) with the result
 * in keel_res.
 */
static void start_op(struct keel_select *s, struct keel_select_branch *b)
{
	struct keel_task *t = s->task;
	struct keel__core *c = keel__core_of(t->loop);
	uint16_t before = t->inflight;

	/* An op refused at once must answer READY, not yield (which would
	 * queue the task while its select is armed). */
	if (c->ready_budget < 1)
		c->ready_budget = 1;
	if (b->u.op.start(t, b->u.op.arg) == KEEL_READY) {
		if (t->inflight != before)
			keel_panic("keel_select: an op branch's start "
				   "returned at once with an op in flight");
		win(b, t->res);
		return;
	}
	if (t->inflight != before + 1)
		keel_panic("keel_select: an op branch's start must start "
			   "exactly one op");
	t->flags &= (uint8_t)~KEEL__T_WAITING;
	b->u.op.op = t->ops;
	b->state = B_ARMED;
	s->ops_out++;
}

int keel_select(struct keel_task *t, struct keel_select *s)
{
	int cause = keel__task_cancel_cause(t);
	unsigned n = s->n, first = 0;
	int r;

	/* Level-triggered, as every await: a cancelled task takes nothing. */
	if (cause)
		return keel__task_ready(t, cause);
	if (s->err || !n || s->phase != P_IDLE || s->winner != -EINVAL)
		return keel__task_ready(t, s->err ? s->err : -EINVAL);
	if (t->inflight)
		return keel__task_ready(t, -EBUSY);
	struct keel__task_ext *x = keel__task_ext(t);

	if (!x)
		return keel__task_ready(t, -ENOMEM);
	/* (keel_select_init() and the adders left every branch B_IDLE with
	 * res -ECANCELED: a select is awaited once per init.) */
	s->task = t;
	/* Ready now? Look from a random branch on (Go's and tokio's rule),
	 * taking only from the first that is. Lemire's multiply-shift maps
	 * the draw onto 0..n-1 without a division. */
	if (!(s->flags & KEEL_SELECT_BIASED))
		first =
		    (unsigned)(((keel__rand64(&fair_state) >> 32) * n) >> 32);
	for (unsigned k = 0, i = first; k < n; k++, i = i + 1 < n ? i + 1 : 0) {
		struct keel_select_branch *b = &s->b[i];

		if (b->kind == SEL_OP)
			continue;
		r = try_now(s, b);
		if (r) {
			s->winner = r < 0 ? r : (int)i;
			if (r > 0)
				b->state = B_DONE;
			return keel__task_ready(t, s->winner);
		}
	}
	/* Nothing is: arm the waits, then start the ops. */
	x->select = s;
	x->select_wake = select_wake;
	t->flags |= KEEL__T_SELECT;
	s->phase = P_ARMING;
	for (unsigned i = 0; i < n; i++) {
		struct keel_select_branch *b = &s->b[i];

		if (b->kind == SEL_OP)
			continue;
		r = arm(s, b);
		if (r < 0) {
			decide(s, r);
			break;
		}
	}
	for (unsigned i = 0; i < n && s->phase == P_ARMING; i++)
		if (s->b[i].kind == SEL_OP)
			start_op(s, &s->b[i]);
	if (s->phase == P_DECIDED && !s->ops_out) {
		leave(s);
		return keel__task_ready(t, s->winner);
	}
	if (s->phase == P_ARMING) {
		s->phase = P_WAITING;
		x->wait_cancel = select_cancelled;
	}
	if (s->external)
		return keel__task_suspend_external(t);
	return keel__task_suspend(t);
}
