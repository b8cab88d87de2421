/* SPDX-License-Identifier: MIT */
/*
 * health.c: the health registry (keel/health.h): components and their
 * states under one mutex, the worst-of, the JSON rendering, and the
 * supervisor watches, which keep each child's recent restart stamps from
 * the supervisor's observer (keel_sup_observe) and turn them into a state
 * when the registry is read, so that a burst of restarts stops counting
 * one period later without anyone reporting it.
 *
 * Lock order: a supervisor's lock, then the registry's (the observer runs
 * with the supervisor's held). So the registry never calls into a
 * supervisor with its own lock held: watches are attached and detached
 * outside it.
 */
#include "supervise.h"

#include <errno.h>
#include <keel/health.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* A watched child's restart decisions within the period, oldest first
 * (a ring of threshold + 1: more never changes the verdict). */
struct kid {
	struct keel_child_id id;
	char name[48];
	uint32_t n, head;
	uint64_t *stamps;
};

struct watch {
	struct keel_health *reg;
	struct keel_sup *sup; /* a reference */
	uint32_t threshold;
	uint64_t period_ns; /* from the first event */
	bool escalated;
	char sup_name[48];
	struct kid *kids;
	uint32_t nkids, kids_cap;
};

struct component {
	char name[KEEL_HEALTH_NAME_MAX];
	enum keel_health_state state;
	char reason[KEEL_HEALTH_REASON_MAX];
	struct watch *watch; /* NULL: set by keel_health_set */
};

struct keel_health {
	pthread_mutex_t lock;
	struct component *comps;
	uint32_t n, cap;
};

/* ---- strings ---------------------------------------------------------- */

/* The length of the UTF-8 sequence at `s` (at most `left` bytes), or 0
 * if it is not one (overlong forms, surrogates and > U+10FFFF included). */
static size_t utf8_len(const unsigned char *s, size_t left)
{
	unsigned c = s[0];
	size_t n;
	unsigned min;
	uint32_t cp;

	if (c < 0x80)
		return 1;
	if ((c & 0xe0) == 0xc0) {
		n = 2, min = 0x80, cp = c & 0x1f;
	} else if ((c & 0xf0) == 0xe0) {
		n = 3, min = 0x800, cp = c & 0x0f;
	} else if ((c & 0xf8) == 0xf0) {
		n = 4, min = 0x10000, cp = c & 0x07;
	} else {
		return 0;
	}
	if (n > left)
		return 0;
	for (size_t i = 1; i < n; i++) {
		if ((s[i] & 0xc0) != 0x80)
			return 0;
		cp = cp << 6 | (s[i] & 0x3f);
	}
	if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
		return 0;
	return n;
}

/* Copy `src` into `dst` (`cap` bytes with the NUL), cut on a character
 * boundary so that a cut reason stays valid UTF-8. */
static void copy_cut(char *dst, size_t cap, const char *src)
{
	size_t at = 0;

	while (src && src[at]) {
		size_t n =
		    utf8_len((const unsigned char *)src + at, strlen(src + at));

		if (!n)
			n = 1; /* rendered as U+FFFD anyway */
		if (at + n >= cap)
			break;
		at += n;
	}
	if (src)
		memcpy(dst, src, at);
	dst[at] = '\0';
}

/* Output that counts what the whole text needs, as snprintf. */
struct out {
	char *buf;
	size_t len, need;
};

static void put(struct out *o, const char *s, size_t n)
{
	if (o->need < o->len) {
		size_t room = o->len - o->need;

		memcpy(o->buf + o->need, s, n < room ? n : room);
	}
	o->need += n;
}

static void puts_(struct out *o, const char *s)
{
	put(o, s, strlen(s));
}

/* A JSON string: RFC 8259's escapes, and U+FFFD for bytes that are not
 * UTF-8 (a JSON text must be). */
static void put_json(struct out *o, const char *s)
{
	const unsigned char *p = (const unsigned char *)s;
	size_t left = strlen(s);

	put(o, "\"", 1);
	while (left) {
		size_t n = utf8_len(p, left);
		char esc[8];

		if (!n) {
			puts_(o, "\\ufffd");
			n = 1;
		} else if (*p == '"' || *p == '\\') {
			esc[0] = '\\';
			esc[1] = (char)*p;
			put(o, esc, 2);
		} else if (*p == '\n' || *p == '\t' || *p == '\r') {
			esc[0] = '\\';
			esc[1] = *p == '\n' ? 'n' : *p == '\t' ? 't' : 'r';
			put(o, esc, 2);
		} else if (*p < 0x20 || *p == 0x7f) {
			snprintf(esc, sizeof(esc), "\\u%04x", *p);
			put(o, esc, 6);
		} else {
			put(o, (const char *)p, n);
		}
		p += n;
		left -= n;
	}
	put(o, "\"", 1);
}

/* ---- supervisor watches ----------------------------------------------- */

static struct kid *kid_of(struct watch *w, const struct keel_sup_event *ev)
{
	for (uint32_t i = 0; i < w->nkids; i++)
		if (w->kids[i].id.slot == ev->id.slot &&
		    w->kids[i].id.gen == ev->id.gen)
			return &w->kids[i];
	if (w->nkids == w->kids_cap) {
		uint32_t cap = w->kids_cap ? w->kids_cap * 2 : 4;
		struct kid *k = realloc(w->kids, cap * sizeof(*k));

		if (!k)
			return NULL;
		w->kids = k;
		w->kids_cap = cap;
	}
	struct kid *k = &w->kids[w->nkids];

	k->stamps = calloc((size_t)w->threshold + 1, sizeof(*k->stamps));
	if (!k->stamps)
		return NULL;
	w->nkids++;
	k->id = ev->id;
	copy_cut(k->name, sizeof(k->name), ev->child);
	k->n = k->head = 0;
	return k;
}

/* Forget stamps older than the period (one exactly that old is kept, as
 * the supervisor keeps it). */
static void kid_prune(const struct watch *w, struct kid *k, uint64_t now)
{
	uint32_t cap = w->threshold + 1;

	while (k->n && now - k->stamps[k->head] > w->period_ns) {
		k->head = (k->head + 1) % cap;
		k->n--;
	}
}

/* The supervisor's observer: its loop thread, its lock held. */
static void watch_event(void *arg, struct keel_sup *sup,
			const struct keel_sup_event *ev)
{
	struct watch *w = arg;
	uint64_t now = keel__clock_now();

	(void)sup;
	pthread_mutex_lock(&w->reg->lock);
	w->period_ns = ev->period_ns;
	if (ev->kind == KEEL_SUP_EV_ESCALATE) {
		w->escalated = true;
	} else if (ev->kind == KEEL_SUP_EV_RESTART) {
		struct kid *k = kid_of(w, ev);

		if (k) {
			uint32_t cap = w->threshold + 1;

			kid_prune(w, k, now);
			if (k->n == cap) { /* drop the oldest */
				k->head = (k->head + 1) % cap;
				k->n--;
			}
			k->stamps[(k->head + k->n++) % cap] = now;
		}
	}
	pthread_mutex_unlock(&w->reg->lock);
}

/* A watched component's state now, with its reason (under the lock). */
static void watch_eval(struct component *c, uint64_t now)
{
	struct watch *w = c->watch;
	struct kid *worst = NULL;

	if (w->escalated) {
		c->state = KEEL_HEALTH_UNHEALTHY;
		snprintf(c->reason, sizeof(c->reason),
			 "supervisor '%s' escalated: restart intensity "
			 "exceeded",
			 w->sup_name);
		return;
	}
	for (uint32_t i = 0; i < w->nkids; i++) {
		kid_prune(w, &w->kids[i], now);
		if (w->kids[i].n > w->threshold &&
		    (!worst || w->kids[i].n > worst->n))
			worst = &w->kids[i];
	}
	if (!worst) {
		c->state = KEEL_HEALTH_HEALTHY;
		c->reason[0] = '\0';
		return;
	}
	c->state = KEEL_HEALTH_DEGRADED;
	snprintf(c->reason, sizeof(c->reason),
		 "child '%s' restarted %u times within %llu ms (threshold %u)",
		 worst->name, worst->n,
		 (unsigned long long)(w->period_ns / 1000000), w->threshold);
}

/* Detach and free a watch; never with the registry's lock held. */
static void watch_free(struct watch *w)
{
	if (!w)
		return;
	/* Once this returns, its observer neither runs nor will. */
	keel_sup_observe(w->sup, NULL, w);
	keel_sup_release(w->sup);
	for (uint32_t i = 0; i < w->nkids; i++)
		free(w->kids[i].stamps);
	free(w->kids);
	free(w);
}

/* ---- the registry ----------------------------------------------------- */

int keel_health_new(struct keel_health **out)
{
	struct keel_health *reg = calloc(1, sizeof(*reg));

	*out = NULL;
	if (!reg)
		return -ENOMEM;
	pthread_mutex_init(&reg->lock, NULL);
	*out = reg;
	return 0;
}

void keel_health_free(struct keel_health *reg)
{
	if (!reg)
		return;
	for (uint32_t i = 0; i < reg->n; i++)
		watch_free(reg->comps[i].watch);
	free(reg->comps);
	pthread_mutex_destroy(&reg->lock);
	free(reg);
}

static struct component *find(struct keel_health *reg, const char *name)
{
	for (uint32_t i = 0; i < reg->n; i++)
		if (!strcmp(reg->comps[i].name, name))
			return &reg->comps[i];
	return NULL;
}

/* The component `name`, added if new (under the lock); NULL: no memory. */
static struct component *find_or_add(struct keel_health *reg, const char *name)
{
	struct component *c = find(reg, name);

	if (c)
		return c;
	if (reg->n == reg->cap) {
		uint32_t cap = reg->cap ? reg->cap * 2 : 8;
		struct component *v = realloc(reg->comps, cap * sizeof(*v));

		if (!v)
			return NULL;
		reg->comps = v;
		reg->cap = cap;
	}
	c = &reg->comps[reg->n++];
	memset(c, 0, sizeof(*c));
	strcpy(c->name, name);
	return c;
}

static bool name_ok(const char *name)
{
	return name && *name && strlen(name) < KEEL_HEALTH_NAME_MAX;
}

int keel_health_set(struct keel_health *reg, const char *component,
		    enum keel_health_state state, const char *reason)
{
	int err = 0;

	if (!reg || !name_ok(component) || state < KEEL_HEALTH_HEALTHY ||
	    state > KEEL_HEALTH_UNHEALTHY)
		return -EINVAL;
	pthread_mutex_lock(&reg->lock);
	struct component *c = find_or_add(reg, component);

	if (!c) {
		err = -ENOMEM;
	} else if (c->watch) {
		err = -EBUSY;
	} else {
		c->state = state;
		copy_cut(c->reason, sizeof(c->reason), reason);
	}
	pthread_mutex_unlock(&reg->lock);
	return err;
}

int keel_health_remove(struct keel_health *reg, const char *component)
{
	struct watch *w = NULL;
	int err = -ENOENT;

	if (!reg || !component)
		return -EINVAL;
	pthread_mutex_lock(&reg->lock);
	struct component *c = find(reg, component);

	if (c) {
		w = c->watch;
		memmove(c, c + 1,
			(size_t)(reg->comps + reg->n - (c + 1)) * sizeof(*c));
		reg->n--;
		err = 0;
	}
	pthread_mutex_unlock(&reg->lock);
	watch_free(w); /* its observer may still run until this returns */
	return err;
}

int keel_health_get(struct keel_health *reg, const char *component,
		    char *reason, size_t len)
{
	int res = -ENOENT;

	if (!reg || !component)
		return -EINVAL;
	pthread_mutex_lock(&reg->lock);
	struct component *c = find(reg, component);

	if (c) {
		if (c->watch)
			watch_eval(c, keel__clock_now());
		res = (int)c->state;
		if (reason && len)
			snprintf(reason, len, "%s", c->reason);
	}
	pthread_mutex_unlock(&reg->lock);
	return res;
}

/* The worst state, watches evaluated now (under the lock). */
static enum keel_health_state overall_locked(struct keel_health *reg)
{
	enum keel_health_state worst = KEEL_HEALTH_HEALTHY;
	uint64_t now = keel__clock_now();

	for (uint32_t i = 0; i < reg->n; i++) {
		if (reg->comps[i].watch)
			watch_eval(&reg->comps[i], now);
		if (reg->comps[i].state > worst)
			worst = reg->comps[i].state;
	}
	return worst;
}

enum keel_health_state keel_health_overall(struct keel_health *reg)
{
	enum keel_health_state st;

	pthread_mutex_lock(&reg->lock);
	st = overall_locked(reg);
	pthread_mutex_unlock(&reg->lock);
	return st;
}

const char *keel_health_state_name(enum keel_health_state state)
{
	switch (state) {
	case KEEL_HEALTH_HEALTHY:
		return "healthy";
	case KEEL_HEALTH_DEGRADED:
		return "degraded";
	case KEEL_HEALTH_UNHEALTHY:
		return "unhealthy";
	}
	return "unknown";
}

size_t keel_health_render_json(struct keel_health *reg, char *buf, size_t len)
{
	struct out o = {.buf = buf, .len = len};

	pthread_mutex_lock(&reg->lock);
	puts_(&o, "{\"status\":");
	put_json(&o, keel_health_state_name(overall_locked(reg)));
	puts_(&o, ",\"components\":[");
	for (uint32_t i = 0; i < reg->n; i++) {
		const struct component *c = &reg->comps[i];

		puts_(&o, i ? ",{\"name\":" : "{\"name\":");
		put_json(&o, c->name);
		puts_(&o, ",\"status\":");
		put_json(&o, keel_health_state_name(c->state));
		if (c->reason[0]) {
			puts_(&o, ",\"reason\":");
			put_json(&o, c->reason);
		}
		puts_(&o, "}");
	}
	puts_(&o, "]}");
	pthread_mutex_unlock(&reg->lock);
	if (len)
		buf[o.need < len ? o.need : len - 1] = '\0';
	return o.need;
}

int keel_health_watch_supervisor(struct keel_health *reg, struct keel_sup *sup,
				 const char *name, uint32_t restart_threshold)
{
	struct watch *old = NULL;
	int err;

	if (!reg || !sup || !name_ok(name) || restart_threshold > 1000000)
		return -EINVAL;
	struct watch *w = calloc(1, sizeof(*w));

	if (!w)
		return -ENOMEM;
	w->reg = reg;
	w->threshold = restart_threshold;
	w->sup = keel_sup_ref(sup);
	copy_cut(w->sup_name, sizeof(w->sup_name), sup->name);
	/* Attached before it is visible: no event is missed in between. */
	err = keel_sup_observe(sup, watch_event, w);
	if (err) {
		keel_sup_release(w->sup);
		free(w);
		return err;
	}
	pthread_mutex_lock(&reg->lock);
	struct component *c = find_or_add(reg, name);

	if (c) {
		old = c->watch;
		c->watch = w;
		c->state = KEEL_HEALTH_HEALTHY;
		c->reason[0] = '\0';
	}
	pthread_mutex_unlock(&reg->lock);
	if (!c) {
		watch_free(w);
		return -ENOMEM;
	}
	watch_free(old);
	return 0;
}
