/* SPDX-License-Identifier: MIT */
/*
 * sup_info.c: what can be asked of a supervisor from any thread: exit
 * reasons, snapshots of its children and counters, lookups by name and
 * id, a dump of the tree below it, and Prometheus metrics.
 *
 * Everything here reads under the supervisor's lock, which its loop holds
 * whenever it writes those fields (supervisor.c), and copies out: a
 * snapshot stays valid after the supervisor has moved on or exited.
 */
#include "prom.h"
#include "supervise.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ---- exit reasons ------------------------------------------------------- */

enum keel_exit_kind keel_exit_kind_of(int status)
{
	if (status >= 0)
		return KEEL_EXIT_NORMAL;
	if (status == -ESHUTDOWN)
		return KEEL_EXIT_SHUTDOWN;
	if (status == -ECANCELED)
		return KEEL_EXIT_CANCELLED;
	if (status == KEEL_ABORTED)
		return KEEL_EXIT_ABORTED;
	return KEEL_EXIT_ERROR;
}

const char *keel_exit_kind_name(enum keel_exit_kind kind)
{
	static const char *const names[] = {"normal", "shutdown", "cancelled",
					    "error", "aborted"};

	return (unsigned)kind < sizeof(names) / sizeof(names[0]) ? names[kind]
								 : "?";
}

void keel__sup_exit_info(struct keel_exit_info *out, enum keel_exit_kind kind,
			 int status, bool killed,
			 const struct keel_abort *abort)
{
	memset(out, 0, sizeof(*out));
	out->kind = kind;
	out->status = status;
	out->killed = killed;
	if (abort && abort->file) {
		snprintf(out->message, sizeof(out->message), "%s",
			 abort->message ? abort->message : "");
		out->file = abort->file;
		out->line = abort->line;
	}
}

/* ---- snapshots ---------------------------------------------------------- */

static enum keel_child_state public_state(const struct keel__sup_child *ch)
{
	switch (ch->state) {
	case SUP_CH_STARTING:
		return KEEL_CHILD_STARTING;
	case SUP_CH_RUNNING:
		return KEEL_CHILD_RUNNING;
	case SUP_CH_RESTARTING:
		return KEEL_CHILD_RESTARTING;
	case SUP_CH_STOPPING:
		return KEEL_CHILD_STOPPING;
	case SUP_CH_EXITED:
		/* Decided soon: say what it will most likely be. */
		return ch->spec.restart == KEEL_PERMANENT ||
			       (ch->spec.restart == KEEL_TRANSIENT &&
				keel_exit_abnormal(ch->last_exit.kind))
			   ? KEEL_CHILD_RESTARTING
			   : KEEL_CHILD_STOPPED;
	default:
		return KEEL_CHILD_STOPPED;
	}
}

/* Lock held. */
static void fill_info(const struct keel_sup *s,
		      const struct keel__sup_child *ch,
		      struct keel_child_info *out)
{
	memset(out, 0, sizeof(*out));
	out->id = ch->id;
	snprintf(out->name, sizeof(out->name), "%s", ch->spec.name);
	out->state = public_state(ch);
	out->restart = ch->spec.restart;
	out->type = ch->spec.type;
	out->actor = ch->actor != NULL;
	out->loop = ch->spec.loop ? ch->spec.loop : s->loop;
	out->restarts = ch->restarts;
	out->start_failures = ch->start_failures;
	out->kills = ch->kills;
	out->dropped = ch->actor ? keel__actor_panic_drops(ch->actor) : 0;
	out->backoff_ns = ch->backoff_ns;
	out->exited = ch->exited;
	out->last_exit = ch->last_exit;
}

/* Visit the children in start order, then the dynamic ones (lock held). */
#define FOR_EACH_CHILD(s, ch, body)                                            \
	do {                                                                   \
		for (uint32_t i_ = 0; i_ < (s)->norder; i_++) {                \
			struct keel__sup_child *ch =                           \
			    (s)->slots[(s)->order[i_]];                        \
			body;                                                  \
		}                                                              \
		for (uint32_t i_ = 0; (s)->ndynamic && i_ < (s)->nslots;       \
		     i_++) {                                                   \
			struct keel__sup_child *ch = (s)->slots[i_];           \
			if (!ch || !ch->dynamic)                               \
				continue;                                      \
			body;                                                  \
		}                                                              \
	} while (0)

uint32_t keel_sup_which_children(struct keel_sup *s,
				 struct keel_child_info *out, uint32_t max)
{
	uint32_t n = 0;

	pthread_mutex_lock(&s->lock);
	FOR_EACH_CHILD(s, ch, {
		if (n < max)
			fill_info(s, ch, &out[n]);
		n++;
	});
	pthread_mutex_unlock(&s->lock);
	return n;
}

void keel_sup_stats(struct keel_sup *s, struct keel_sup_stats *out)
{
	memset(out, 0, sizeof(*out));
	pthread_mutex_lock(&s->lock);
	out->state = s->state;
	out->specs = s->strategy == KEEL_SIMPLE_ONE_FOR_ONE ? 1 : s->norder;
	out->dropped = s->dropped_gone;
	FOR_EACH_CHILD(s, ch, {
		if (ch->state == SUP_CH_RUNNING || ch->state == SUP_CH_STOPPING)
			out->active++;
		if (ch->spec.type == KEEL_SUPERVISOR)
			out->supervisors++;
		else
			out->workers++;
		if (ch->actor)
			out->dropped += keel__actor_panic_drops(ch->actor);
	});
	out->restarts = s->restarts;
	out->start_failures = s->start_failures;
	out->kills = s->kills;
	out->recent_restarts = s->nstamps;
	out->escalated = s->escalated;
	out->exit_status = s->exited ? s->exit_status : 0;
	pthread_mutex_unlock(&s->lock);
}

/* ---- lookups ------------------------------------------------------------ */

int keel_sup_child_id(struct keel_sup *s, const char *name,
		      struct keel_child_id *out)
{
	int r = -ENOENT;

	pthread_mutex_lock(&s->lock);
	for (uint32_t i = 0; i < s->norder; i++) {
		struct keel__sup_child *ch = s->slots[s->order[i]];

		if (!strcmp(ch->spec.name, name)) {
			*out = ch->id;
			r = 0;
			break;
		}
	}
	pthread_mutex_unlock(&s->lock);
	return r;
}

struct keel_actor *keel_sup_child_actor(struct keel_sup *s,
					struct keel_child_id id)
{
	struct keel_actor *a = NULL;
	struct keel__sup_child *ch;

	pthread_mutex_lock(&s->lock);
	ch = keel__sup_lookup(s, id);
	if (ch && ch->actor)
		a = keel_actor_ref(ch->actor);
	pthread_mutex_unlock(&s->lock);
	return a;
}

struct keel_sup *keel_sup_child_sup(struct keel_sup *s, struct keel_child_id id)
{
	struct keel_sup *c = NULL;
	struct keel__sup_child *ch;

	pthread_mutex_lock(&s->lock);
	ch = keel__sup_lookup(s, id);
	if (ch && ch->child_sup)
		c = keel_sup_ref(ch->child_sup);
	pthread_mutex_unlock(&s->lock);
	return c;
}

/* ---- the tree ----------------------------------------------------------- */

/* A copy of a supervisor's children, with references on the supervisors
 * among them, to walk the tree without holding any lock. */
struct tree_node {
	struct keel_child_info info;
	struct keel_sup *sup; /* a reference, or NULL */
};

static struct tree_node *tree_children(struct keel_sup *s, uint32_t *n)
{
	struct tree_node *v = NULL;
	uint32_t count = 0, i = 0;

	pthread_mutex_lock(&s->lock);
	FOR_EACH_CHILD(s, ch, {
		(void)ch;
		count++;
	});
	v = count ? calloc(count, sizeof(*v)) : NULL;
	if (v) {
		FOR_EACH_CHILD(s, ch, {
			fill_info(s, ch, &v[i].info);
			v[i].sup =
			    ch->child_sup ? keel_sup_ref(ch->child_sup) : NULL;
			i++;
		});
	}
	pthread_mutex_unlock(&s->lock);
	*n = v ? count : 0;
	return v;
}

static void tree_free(struct tree_node *v, uint32_t n)
{
	for (uint32_t i = 0; i < n; i++)
		if (v[i].sup)
			keel_sup_release(v[i].sup);
	free(v);
}

static const char *const state_names[] = {"stopped", "starting", "running",
					  "restarting", "stopping"};
static const char *const sup_state_names[] = {"starting", "running", "stopping",
					      "exited"};
static const char *const strategy_names[] = {
    "one_for_one", "one_for_all", "rest_for_one", "simple_one_for_one"};
static const char *const restart_names[] = {"permanent", "transient",
					    "temporary"};

static int dump_tree(FILE *out, struct keel_sup *s, int depth)
{
	struct keel_sup_stats st;
	struct tree_node *v;
	uint32_t n;
	int lines = 1;

	keel_sup_stats(s, &st);
	fprintf(out, "%*ssupervisor %s [%s, %s] restarts %llu", 2 * depth, "",
		s->name, strategy_names[s->strategy], sup_state_names[st.state],
		(unsigned long long)st.restarts);
	if (st.escalated)
		fprintf(out, ", escalated");
	if (st.state == KEEL_SUP_EXITED)
		fprintf(out, ", exit status %d", st.exit_status);
	fputc('\n', out);
	v = tree_children(s, &n);
	for (uint32_t i = 0; i < n; i++) {
		const struct keel_child_info *c = &v[i].info;

		fprintf(out, "%*s%s [%s, %s%s] restarts %u", 2 * depth + 2, "",
			c->name, state_names[c->state],
			restart_names[c->restart], c->actor ? ", actor" : "",
			c->restarts);
		if (c->kills)
			fprintf(out, ", killed %u", c->kills);
		if (c->dropped)
			fprintf(out, ", dropped %llu",
				(unsigned long long)c->dropped);
		if (c->exited) {
			fprintf(out, ", last exit %s (%d",
				keel_exit_kind_name(c->last_exit.kind),
				c->last_exit.status);
			if (c->last_exit.file)
				fprintf(out, ": %s at %s:%d",
					c->last_exit.message, c->last_exit.file,
					c->last_exit.line);
			fputc(')', out);
		}
		fputc('\n', out);
		lines++;
		if (v[i].sup)
			lines += dump_tree(out, v[i].sup, depth + 2);
	}
	tree_free(v, n);
	return lines;
}

int keel_sup_dump(struct keel_sup *s, int fd)
{
	int dfd = dup(fd);
	FILE *out = dfd >= 0 ? fdopen(dfd, "w") : NULL;
	int lines;

	if (!out) {
		int err = -errno;

		if (dfd >= 0)
			close(dfd);
		return err;
	}
	lines = dump_tree(out, s, 0);
	fclose(out);
	return lines;
}

/* ---- metrics ------------------------------------------------------------ */

/* Every supervisor of the trees but a pool's dynamic children, with its
 * path ("top/shards") as label. */
struct flat {
	struct keel_sup **sups; /* references */
	char **paths;
	uint32_t n, cap;
};

static void flatten(struct flat *f, struct keel_sup *s, const char *parent)
{
	struct tree_node *v;
	uint32_t n;
	size_t plen = parent ? strlen(parent) + 1 : 0;
	char *path = malloc(plen + strlen(s->name) + 1);

	if (!path)
		return;
	sprintf(path, "%s%s%s", parent ? parent : "", parent ? "/" : "",
		s->name);
	if (f->n == f->cap) {
		uint32_t cap = f->cap ? f->cap * 2 : 8;
		struct keel_sup **a = realloc(f->sups, cap * sizeof(*a));
		char **p;

		if (a)
			f->sups = a;
		p = a ? realloc(f->paths, cap * sizeof(*p)) : NULL;
		if (!a || !p) {
			free(path);
			return;
		}
		f->paths = p;
		f->cap = cap;
	}
	f->sups[f->n] = keel_sup_ref(s);
	f->paths[f->n++] = path;
	/* A pool's children are dynamic: as many as it was asked for, all
	 * named after its template. A series each would be an unbounded set
	 * that repeats one label value; keel_sup_children counts them. */
	if (s->strategy == KEEL_SIMPLE_ONE_FOR_ONE)
		return;
	v = tree_children(s, &n);
	for (uint32_t i = 0; i < n; i++)
		if (v[i].sup)
			flatten(f, v[i].sup, path);
	tree_free(v, n);
}

struct sup_counter {
	const char *name;
	const char *help;
};

static const struct sup_counter counters[] = {
    {"keel_sup_restarts_total", "Child restarts decided by the supervisor."},
    {"keel_sup_start_failures_total", "Child starts that failed."},
    {"keel_sup_kills_total",
     "Children killed (brutal_kill or a shutdown timeout)."},
    {"keel_sup_messages_dropped_total",
     "Messages actor children were handling when they panicked."},
    {"keel_sup_escalations_total",
     "Exits because the restart intensity was exceeded."},
};

static uint64_t counter_value(const struct keel_sup_stats *st, size_t m)
{
	switch (m) {
	case 0:
		return st->restarts;
	case 1:
		return st->start_failures;
	case 2:
		return st->kills;
	case 3:
		return st->dropped;
	default:
		return st->escalated;
	}
}

size_t keel_sup_metrics_render(struct keel_sup *const *sups, unsigned n,
			       char *buf, size_t len)
{
	struct keel__prom p;
	struct flat f = {0};
	struct keel_sup_stats *st;

	keel__prom_init(&p, buf, len);
	for (unsigned i = 0; i < n; i++)
		flatten(&f, sups[i], NULL);
	st = calloc(f.n ? f.n : 1, sizeof(*st));
	for (uint32_t i = 0; st && i < f.n; i++)
		keel_sup_stats(f.sups[i], &st[i]);
	for (size_t m = 0; st && m < sizeof(counters) / sizeof(counters[0]);
	     m++) {
		keel__prom_family(&p, counters[m].name, KEEL__PROM_COUNTER,
				  counters[m].help);
		for (uint32_t i = 0; i < f.n; i++) {
			keel__prom_sample(&p, counters[m].name, NULL);
			keel__prom_label(&p, "sup", f.paths[i]);
			keel__prom_value(&p, counter_value(&st[i], m));
		}
	}
	keel__prom_family(&p, "keel_sup_children", KEEL__PROM_GAUGE,
			  "Children by state.");
	for (uint32_t i = 0; st && i < f.n; i++) {
		uint64_t by_state[5] = {0};
		struct tree_node *v;
		uint32_t nc;

		v = tree_children(f.sups[i], &nc);
		for (uint32_t c = 0; c < nc; c++)
			by_state[v[c].info.state]++;
		tree_free(v, nc);
		for (int s = 0; s < 5; s++) {
			keel__prom_sample(&p, "keel_sup_children", NULL);
			keel__prom_label(&p, "sup", f.paths[i]);
			keel__prom_label(&p, "state", state_names[s]);
			keel__prom_value(&p, by_state[s]);
		}
	}
	/* Per child only for static children: a bounded set of names. */
	keel__prom_family(&p, "keel_sup_child_restarts_total",
			  KEEL__PROM_COUNTER, "Restarts of a static child.");
	for (uint32_t i = 0; st && i < f.n; i++) {
		struct keel_sup *s = f.sups[i];
		uint32_t nc = s->strategy == KEEL_SIMPLE_ONE_FOR_ONE ? 0 : 1;
		struct tree_node *v = nc ? tree_children(s, &nc) : NULL;

		for (uint32_t c = 0; c < nc; c++) {
			keel__prom_sample(&p, "keel_sup_child_restarts_total",
					  NULL);
			keel__prom_label(&p, "sup", f.paths[i]);
			keel__prom_label(&p, "child", v[c].info.name);
			keel__prom_value(&p, v[c].info.restarts);
		}
		tree_free(v, nc);
	}
	for (uint32_t i = 0; i < f.n; i++) {
		keel_sup_release(f.sups[i]);
		free(f.paths[i]);
	}
	free(f.sups);
	free(f.paths);
	free(st);
	return keel__prom_end(&p);
}
