/* SPDX-License-Identifier: MIT */
/*
 * fuzz_mailbox.c: bounded mailboxes (keel/sync.h) driven by a program the
 * input spells. Up to MAX_BOXES mailboxes (capacity and policy from the
 * input) and MAX_WORKERS tasks on one loop; each byte pair is a command:
 * make a mailbox, spawn a worker, have a worker send (awaiting), try_send,
 * receive (awaiting), try_recv or close, panic or exit; try_send, try_recv
 * and close from the driver itself (between loop turns it is a plain
 * thread to keel, so its sends take the cross-thread path); cancel a
 * worker's token, give it an expired deadline, cancel or kill the task,
 * give it a fresh token; release a mailbox; run loop turns.
 *
 * Every message is a distinct number whose fate the target follows (held
 * by its sender, queued, received, dropped, refused). After each call it
 * checks the API's promises: documented results only; no message received
 * or dropped twice, or after its send failed, or from another mailbox; FIFO
 * per sender; on_drop only for queued messages (or the one a DROP_NEWEST
 * send refuses); the counters agree with each other and with what was
 * seen; a receiver is not left waiting while messages wait; at the end,
 * with every mailbox closed, no task is still blocked, and once released
 * every queued message was received or handed to on_drop.
 */
#include "program.h"

#define MAX_BOXES   4
#define MAX_WORKERS 6
#define MAX_MSGS    1024
#define DRIVER	    MAX_WORKERS /* the driver's sender index */

enum msg_state {
	M_UNUSED,
	M_SENDING,  /* offered by a send that has not returned yet */
	M_QUEUED,   /* the mailbox has it */
	M_RECEIVED, /* a receiver got it */
	M_DROPPED,  /* on_drop got it */
	M_REFUSED,  /* its send failed: it must never show up */
	M_ORPHAN,   /* its sender was killed mid-send: queued or not */
};

struct msg {
	uint8_t state, box, sender;
	uint32_t seq; /* per sender and box, from 1 */
};

struct box {
	struct keel_mailbox *mb; /* NULL: slot free */
	uint32_t cap;
	int policy;
	int refs;    /* the driver's (until released) and busy workers' */
	bool driver; /* the driver still holds its reference */
	bool closed;
	bool used; /* made once per input: late on_drops find their counts */
	int count[M_ORPHAN + 1]; /* its messages by state */
	uint64_t received;	 /* as seen: receives recorded */
	uint64_t dropped;	 /* on_drop calls while it lived */
	uint32_t next_seq[MAX_WORKERS + 1];
	uint32_t last_seq[MAX_WORKERS + 1]; /* last received, per sender */
};

enum worker_op { W_SEND, W_TRY_SEND, W_RECV, W_TRY_RECV, W_CLOSE, W_PANIC };

struct worker;

struct slot {
	struct worker *w; /* NULL: no worker */
	struct keel_task *t;
	struct keel_token *tok;
	struct keel_event *go; /* set: a command (or quit) waits */
	bool busy;	       /* a command is given and not done */
	bool quit;
	int op, box;
	uint32_t msg;  /* W_SEND */
	bool recorded; /* W_RECV: the message it got is already counted */
};

struct worker {
	struct keel_task task;
	struct slot *s;
	void *got;
};

static struct box boxes[MAX_BOXES];
static struct slot slots[MAX_WORKERS];
static struct msg msgs[MAX_MSGS + 1]; /* by number, from 1 */
static uint32_t nmsgs;
static uint32_t newest; /* the message a DROP_NEWEST send may refuse */

#define MSG_PTR(i) ((void *)(uintptr_t)(i))

static uint32_t msg_index(void *p, const char *what)
{
	uintptr_t i = (uintptr_t)p;

	if (i == 0 || i > nmsgs)
		violation("%s: %p is no message ever sent", what, p);
	return (uint32_t)i;
}

static const char *state_name(int s)
{
	static const char *names[] = {"unused",	  "being sent", "queued",
				      "received", "dropped",	"refused",
				      "orphaned"};
	return names[s];
}

/* ---- the model's transitions -------------------------------------------- */

static void set_state(struct msg *m, int state)
{
	boxes[m->box].count[m->state]--;
	boxes[m->box].count[state]++;
	m->state = (uint8_t)state;
}

static void on_drop(void *p, void *arg)
{
	struct box *b = arg;
	uint32_t i = msg_index(p, "on_drop");
	struct msg *m = &msgs[i];

	if (b < boxes || b >= boxes + MAX_BOXES)
		violation("on_drop got drop_arg %p, not its mailbox's", arg);
	if (m->box != b - boxes)
		violation("on_drop of mailbox %td got message %u of mailbox %u",
			  b - boxes, i, m->box);
	if (m->state != M_QUEUED && m->state != M_ORPHAN &&
	    !(m->state == M_SENDING && i == newest))
		violation("on_drop got message %u, %s", i,
			  state_name(m->state));
	set_state(m, M_DROPPED);
	b->dropped++;
}

static void received(struct box *b, void *p, const char *what);

/* A worker awaiting keel_mb_recv on `b` (or about to). */
static bool receiving(const struct slot *s, const struct box *b)
{
	return s->w && s->busy && s->op == W_RECV && s->box == b - boxes;
}

/*
 * A waiting receiver handed a message has not run yet, but its message
 * left the mailbox before any taken since: count it first, so that the
 * FIFO check sees the mailbox's order.
 */
static void flush_receiver(struct box *b)
{
	for (int i = 0; i < MAX_WORKERS; i++) {
		struct slot *s = &slots[i];

		if (receiving(s, b) && s->w->got && !s->recorded) {
			s->recorded = true;
			received(b, s->w->got, "keel_mb_recv (handed over)");
		}
	}
}

static void received(struct box *b, void *p, const char *what)
{
	uint32_t i = msg_index(p, what);
	struct msg *m = &msgs[i];

	flush_receiver(b);
	if (m->box != b - boxes)
		violation("%s from mailbox %td gave message %u of mailbox %u",
			  what, b - boxes, i, m->box);
	if (m->state != M_QUEUED && m->state != M_SENDING &&
	    m->state != M_ORPHAN)
		violation("%s gave message %u, %s", what, i,
			  state_name(m->state));
	if (m->seq <= b->last_seq[m->sender])
		violation("%s: message %u of sender %u (its #%u) after #%u: "
			  "not FIFO per sender",
			  what, i, m->sender, m->seq, b->last_seq[m->sender]);
	b->last_seq[m->sender] = m->seq;
	set_state(m, M_RECEIVED);
	b->received++;
}

static uint32_t new_msg(struct box *b, int sender)
{
	struct msg *m;

	if (nmsgs == MAX_MSGS)
		return 0;
	m = &msgs[++nmsgs];
	m->box = (uint8_t)(b - boxes);
	m->sender = (uint8_t)sender;
	m->seq = ++b->next_seq[sender];
	m->state = M_SENDING;
	b->count[M_SENDING]++;
	return nmsgs;
}

/* A send's result, by whichever path: 0, KEEL_MB_DROPPED or an error. */
static void send_result(struct box *b, uint32_t i, int res, bool awaited)
{
	struct msg *m = &msgs[i];

	if (res == 0 || res == KEEL_MB_DROPPED) {
		if (b->closed && !awaited)
			violation("a send to a closed mailbox returned %d",
				  res);
		if (res == KEEL_MB_DROPPED &&
		    b->policy != KEEL_MB_DROP_NEWEST &&
		    b->policy != KEEL_MB_DROP_OLDEST)
			violation("KEEL_MB_DROPPED under policy %d", b->policy);
		if (res == KEEL_MB_DROPPED &&
		    b->policy == KEEL_MB_DROP_NEWEST) {
			if (m->state != M_DROPPED)
				violation("DROP_NEWEST: message %u not handed "
					  "to on_drop (%s)",
					  i, state_name(m->state));
			return;
		}
		/* Taken already, by a receiver or (DROP_OLDEST) on_drop. */
		if (m->state == M_SENDING)
			set_state(m, M_QUEUED);
		return;
	}
	if (m->state != M_SENDING)
		violation("a send failed (%d) but message %u is %s", res, i,
			  state_name(m->state));
	if (res == -EPIPE && !b->closed)
		violation("-EPIPE from an open mailbox");
	if (res == -EAGAIN && b->policy != KEEL_MB_FAIL &&
	    (awaited || b->policy != KEEL_MB_BLOCK))
		violation("-EAGAIN from a send under policy %d", b->policy);
	set_state(m, M_REFUSED);
}

/*
 * The counters against each other and against what was seen. A message a
 * blocked sender moved in, and one handed to a receiver that has not run
 * yet, are not seen yet: those bounds allow for them.
 */
static void check_stats(struct box *b)
{
	struct keel_mb_stats st;
	uint64_t queued, sending;

	flush_receiver(b);
	queued = (uint64_t)b->count[M_QUEUED];
	sending = (uint64_t)(b->count[M_SENDING] + b->count[M_ORPHAN]);
	keel_mb_stats(b->mb, &st);
	if (st.capacity != b->cap)
		violation("capacity %u, made with %u", st.capacity, b->cap);
	if (st.dropped != b->dropped)
		violation("stats say %llu dropped, on_drop had %llu",
			  (unsigned long long)st.dropped,
			  (unsigned long long)b->dropped);
	if (st.received != b->received)
		violation("stats say %llu received, receivers got %llu",
			  (unsigned long long)st.received,
			  (unsigned long long)b->received);
	if (st.depth > 2ull * b->cap)
		violation("depth %u over twice the capacity %u", st.depth,
			  b->cap);
	if (st.depth < queued || st.depth > queued + sending)
		violation("depth %u, but %llu messages queued (and %llu "
			  "being sent)",
			  st.depth, (unsigned long long)queued,
			  (unsigned long long)sending);
}

/* ---- workers ------------------------------------------------------------ */

static void box_unref(struct box *b)
{
	if (--b->refs)
		return;
	/* What is left goes to on_drop with the last reference, which may
	 * be keel's own (a notification on its way): finish() checks. */
	keel_mailbox_release(b->mb);
	b->mb = NULL;
}

/* Runs when a worker ends: exit, panic or kill (its defer). */
static void worker_gone(void *arg)
{
	struct slot *s = arg;

	if (s->busy) {
		struct box *b = &boxes[s->box];

		if (s->op == W_SEND && msgs[s->msg].state == M_SENDING)
			set_state(&msgs[s->msg], M_ORPHAN);
		/* Handed a message before it could run: it got it. */
		if (s->op == W_RECV)
			flush_receiver(b);
		box_unref(b);
	}
	keel_token_release(s->tok);
	keel_event_free(s->go);
	memset(s, 0, sizeof(*s));
}

static void try_send_checked(struct box *b, int sender)
{
	uint32_t i = new_msg(b, sender);
	int res;

	if (!i)
		return;
	newest = i;
	res = keel_mb_try_send(b->mb, MSG_PTR(i));
	newest = 0;
	EXPECT_RES("keel_mb_try_send", res, 0, KEEL_MB_DROPPED, -EAGAIN,
		   -EPIPE);
	send_result(b, i, res, false);
}

static void try_recv_checked(struct box *b)
{
	void *p = NULL;
	int res = keel_mb_try_recv(b->mb, &p);

	EXPECT_RES("keel_mb_try_recv", res, 0, -EAGAIN, -EPIPE);
	if (res == 0)
		received(b, p, "keel_mb_try_recv");
	else if (res == -EPIPE && !b->closed)
		violation("keel_mb_try_recv: -EPIPE from an open mailbox");
}

static void close_box(struct box *b)
{
	keel_mb_close(b->mb);
	b->closed = true;
}

static bool other_receiver(const struct slot *self)
{
	for (int i = 0; i < MAX_WORKERS; i++)
		if (&slots[i] != self &&
		    receiving(&slots[i], &boxes[self->box]))
			return true;
	return false;
}

/* keel_mb_send(), with the message on_drop may refuse while it runs. */
static int send_await(struct keel_task *t, struct slot *s)
{
	int r;

	newest = s->msg;
	r = keel_mb_send(t, boxes[s->box].mb, MSG_PTR(s->msg));
	newest = 0;
	return r;
}

static int worker_step(struct keel_task *t)
{
	struct worker *w = keel_container_of(t, struct worker, task);
	struct slot *s = w->s;

	KEEL_BEGIN(t);
	if (keel_defer(t, worker_gone, s))
		violation("keel_defer failed");
	for (;;) {
		/* Idle until the driver sets `go`. A cancelled worker runs
		 * the command it has, then ends here: its token fails every
		 * wait from now on. */
		KEEL_AWAIT(t, keel_event_wait(t, s->go));
		if (s->quit || (keel_res(t) && !s->busy))
			KEEL_EXIT(t, 0);
		keel_event_clear(s->go);
		if (!s->busy)
			continue;
		switch (s->op) {
		case W_SEND:
			KEEL_AWAIT(t, send_await(t, s));
			EXPECT_RES("keel_mb_send", keel_res(t), 0,
				   KEEL_MB_DROPPED, -EAGAIN, -EPIPE, -ECANCELED,
				   -ETIMEDOUT);
			send_result(&boxes[s->box], s->msg, keel_res(t), true);
			break;
		case W_RECV:
			w->got = NULL;
			s->recorded = false;
			KEEL_AWAIT(t,
				   keel_mb_recv(t, boxes[s->box].mb, &w->got));
			EXPECT_RES("keel_mb_recv", keel_res(t), 0, -EPIPE,
				   -EBUSY, -ECANCELED, -ETIMEDOUT);
			if (keel_res(t) == -EBUSY && !other_receiver(s))
				violation("keel_mb_recv: -EBUSY, but no other "
					  "task receives");
			if (keel_res(t) == -EPIPE && !boxes[s->box].closed)
				violation("keel_mb_recv: -EPIPE from an open "
					  "mailbox");
			if (keel_res(t) == 0 && !s->recorded) {
				s->recorded = true;
				received(&boxes[s->box], w->got,
					 "keel_mb_recv");
			}
			w->got = NULL;
			break;
		case W_TRY_SEND:
			try_send_checked(&boxes[s->box], (int)(s - slots));
			break;
		case W_TRY_RECV:
			try_recv_checked(&boxes[s->box]);
			break;
		case W_CLOSE:
			close_box(&boxes[s->box]);
			break;
		case W_PANIC:
			keel_panic("fuzz: a worker panics");
		}
		s->busy = false;
		box_unref(&boxes[s->box]);
	}
}

static KEEL_TASK_TYPE(worker_task, struct worker, task, worker_step);

/* ---- the driver --------------------------------------------------------- */

static struct keel_token *root; /* this input's: every worker's parent */

static struct box *pick_box(struct program *pr)
{
	struct box *b = &boxes[next_byte(pr) % MAX_BOXES];

	return b->mb && b->driver ? b : NULL;
}

static struct slot *pick_slot(struct program *pr)
{
	struct slot *s = &slots[next_byte(pr) % MAX_WORKERS];

	return s->w ? s : NULL;
}

static void make_box(struct program *pr)
{
	struct box *b = &boxes[next_byte(pr) % MAX_BOXES];
	uint8_t how = next_byte(pr);
	struct keel_mailbox_opts o = {
	    .capacity = how % 8, /* 0: the default, 1024 */
	    .policy = (enum keel_mb_policy)(how >> 3 & 3),
	    .on_drop = on_drop,
	    .drop_arg = b,
	};

	if (b->used)
		return;
	memset(b, 0, sizeof(*b));
	b->used = true;
	if (keel_mailbox_new(fuzz_loop(), &o, &b->mb))
		violation("keel_mailbox_new failed");
	b->cap = o.capacity ? o.capacity : 1024;
	b->policy = (int)o.policy;
	b->refs = 1;
	b->driver = true;
}

static void spawn_worker(struct program *pr)
{
	struct slot *s = &slots[next_byte(pr) % MAX_WORKERS];
	struct worker *w;

	if (s->w)
		return;
	w = keel_spawn(fuzz_loop(), &worker_task, next_byte(pr) % 4);
	if (!w)
		violation("keel_spawn failed");
	w->s = s;
	s->w = w;
	s->t = keel_task_of(&worker_task, w);
	if (keel_event_new(fuzz_loop(), &s->go))
		violation("keel_event_new failed");
	if (keel_token_new(fuzz_loop(), root, &s->tok) ||
	    keel_task_set_token(s->t, s->tok))
		violation("keel_token_new or keel_task_set_token failed");
}

/* Give a worker a command on a mailbox; it runs at the next turn. */
static void command(struct program *pr, int op)
{
	struct slot *s = pick_slot(pr);
	struct box *b = pick_box(pr);

	if (!s || !b || s->busy)
		return;
	if (op == W_SEND || op == W_TRY_SEND) {
		s->msg = op == W_SEND ? new_msg(b, (int)(s - slots)) : 0;
		if (op == W_SEND && !s->msg)
			return;
	}
	s->op = op;
	s->box = (int)(b - boxes);
	s->busy = true;
	b->refs++;
	keel_event_set(s->go);
}

static void token_op(struct program *pr, int op)
{
	struct slot *s = pick_slot(pr);
	struct keel_token *tok;
	int res;

	if (!s)
		return;
	switch (op) {
	case 0:
		keel_token_cancel(s->tok);
		break;
	case 1: /* already past: cancelled at the next turn */
		if (keel_token_set_deadline(s->tok, 0))
			violation("keel_token_set_deadline failed");
		break;
	case 2:
		if (keel_task_cancel(s->t))
			violation("keel_task_cancel failed");
		break;
	case 3:
		res = keel_task_kill(s->t);
		EXPECT_RES("keel_task_kill", res, 0);
		/* Its defer cleared the slot, unless it never ran (its frame
		 * is gone already: nothing was handed to it). */
		if (s->w) {
			s->w = NULL;
			worker_gone(s);
		}
		break;
	case 4:
		if (keel_token_new(fuzz_loop(), root, &tok) ||
		    keel_task_set_token(s->t, tok))
			violation("keel_token_new or set_token failed");
		keel_token_release(s->tok);
		s->tok = tok;
		break;
	}
}

/* A receiver waits while messages wait: after quiet turns, a lost wake. */
static void check_receivers(void)
{
	for (int i = 0; i < MAX_BOXES; i++) {
		struct box *b = &boxes[i];
		struct keel_mb_stats st;

		if (!b->mb)
			continue;
		keel_mb_stats(b->mb, &st);
		for (int j = 0; j < MAX_WORKERS; j++)
			if (st.depth && receiving(&slots[j], b) &&
			    !slots[j].w->got)
				violation("worker %d still waits on mailbox "
					  "%d, which holds %u messages",
					  j, i, st.depth);
	}
}

static void run_program(struct program *pr)
{
	while (pr->n) {
		uint8_t op = next_byte(pr);
		struct box *b;

		switch (op % 16) {
		case 0:
			make_box(pr);
			break;
		case 1:
			spawn_worker(pr);
			break;
		case 2:
		case 3:
			command(pr, W_SEND);
			break;
		case 4:
			command(pr, W_TRY_SEND);
			break;
		case 5:
			command(pr, W_RECV);
			break;
		case 6:
			command(pr, op & 0x80 ? W_TRY_RECV : W_CLOSE);
			break;
		case 7:
			command(pr, W_PANIC);
			break;
		case 8:
			if ((b = pick_box(pr)))
				try_send_checked(b, DRIVER);
			break;
		case 9:
			if ((b = pick_box(pr)))
				try_recv_checked(b);
			break;
		case 10:
			if ((b = pick_box(pr)) && (op & 0x80))
				close_box(b);
			break;
		case 11:
			token_op(pr, next_byte(pr) % 5);
			break;
		case 12:
			if ((b = pick_box(pr)) && (op & 0x80)) {
				b->driver = false;
				box_unref(b);
			}
			break;
		case 13: {
			struct slot *s = pick_slot(pr);

			if (s) {
				s->quit = true;
				keel_event_set(s->go);
			}
			break;
		}
		default: /* turns; after three quiet ones, no wake is owed */
			run_turns(fuzz_loop(), 1 + op % 4);
			if (op % 4 >= 2)
				check_receivers();
			break;
		}
		for (int i = 0; i < MAX_BOXES; i++)
			if (boxes[i].mb)
				check_stats(&boxes[i]);
	}
}

/* Close everything: nobody may stay blocked. Then end every worker. */
static void finish(void)
{
	struct keel_loop *loop = fuzz_loop();
	struct keel_loop_stats st;

	for (int i = 0; i < MAX_BOXES; i++)
		if (boxes[i].mb)
			close_box(&boxes[i]);
	run_turns(loop, 3);
	for (int i = 0; i < MAX_WORKERS; i++) {
		struct slot *s = &slots[i];

		if (s->w && s->busy && (s->op == W_SEND || s->op == W_RECV))
			violation("worker %d still blocked in a %s on closed "
				  "mailbox %d",
				  i, s->op == W_SEND ? "send" : "receive",
				  s->box);
		if (s->w) {
			s->quit = true;
			keel_event_set(s->go);
		}
	}
	for (int i = 0; i < 10; i++) {
		keel_loop_stats(loop, &st);
		if (!st.tasks_live)
			break;
		run_turns(loop, 1);
	}
	for (int i = 0; i < MAX_BOXES; i++)
		if (boxes[i].mb && boxes[i].driver) {
			check_stats(&boxes[i]);
			boxes[i].driver = false;
			box_unref(&boxes[i]);
		}
	run_turns(loop, 1); /* keel's last references */
	for (uint32_t i = 1; i <= nmsgs; i++)
		if (msgs[i].state == M_SENDING || msgs[i].state == M_QUEUED)
			violation("message %u ended %s: the released mailbox "
				  "did not hand it to on_drop",
				  i, state_name(msgs[i].state));
	keel_token_cancel(root);
	keel_token_release(root);
	run_turns(loop, 1);
	expect_clean_loop(loop);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct program pr = {data, size};

	memset(boxes, 0, sizeof(boxes));
	memset(slots, 0, sizeof(slots));
	nmsgs = 0;
	if (keel_token_new(fuzz_loop(), NULL, &root))
		violation("keel_token_new failed");
	run_program(&pr);
	finish();
	return 0;
}
