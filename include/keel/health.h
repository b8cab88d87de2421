/* SPDX-License-Identifier: MIT */
/*
 * keel/health.h: a health registry. Components (a database link, a
 * listener, a supervision tree) report healthy, degraded or unhealthy with
 * a reason; the overall state is the worst of them; the registry renders
 * as JSON for a /health endpoint (keel_http_route_health_registry in
 * keel/http.h, or a handler of your own).
 */
#ifndef KEEL_HEALTH_H
#define KEEL_HEALTH_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

struct keel_health;
struct keel_sup;

/* Ordered: a worse state is larger. */
enum keel_health_state {
	KEEL_HEALTH_HEALTHY = 0,
	KEEL_HEALTH_DEGRADED = 1, /* working, but not as it should */
	KEEL_HEALTH_UNHEALTHY = 2,
};

/* Reasons are kept up to this many bytes (cut on a character boundary). */
#define KEEL_HEALTH_REASON_MAX 160
/* Component names up to this many bytes. */
#define KEEL_HEALTH_NAME_MAX 64

/*
 * Create an empty registry (overall: healthy). Any thread.
 * Returns 0 or -ENOMEM.
 * Ownership: the caller owns *out; keel_health_free() frees it.
 */
int keel_health_new(struct keel_health **out);

/*
 * Free the registry: its supervisor watches are removed first (after
 * that, no observer of it runs). Nothing may use it after (HTTP routes
 * serving it included: stop the server first). NULL is fine.
 * Ownership: `reg` is freed, with the supervisor references it held.
 */
void keel_health_free(struct keel_health *reg);

/*
 * Report `component`'s state and why (`reason` may be NULL). The first
 * report adds the component; components keep their order of first report.
 * Any thread, any number of threads at once (a mutex). Returns 0, -EINVAL
 * (no name, a name over KEEL_HEALTH_NAME_MAX - 1 bytes, a bad state),
 * -EBUSY (the component watches a supervisor: its state is the watch's)
 * or -ENOMEM.
 * Ownership: `component` and `reason` are copied.
 */
int keel_health_set(struct keel_health *reg, const char *component,
		    enum keel_health_state state, const char *reason);

/*
 * Forget a component (and its supervisor watch, if any). Any thread.
 * Returns 0 or -ENOENT.
 * Ownership: nothing changes hands.
 */
int keel_health_remove(struct keel_health *reg, const char *component);

/*
 * A component's state and reason (copied into `reason`, `len` bytes, may
 * be NULL/0). Any thread. Returns the state (>= 0) or -ENOENT.
 * Ownership: copies into the caller's `reason`.
 */
int keel_health_get(struct keel_health *reg, const char *component,
		    char *reason, size_t len);

/*
 * The worst state of all components; healthy when there are none. Any
 * thread.
 * Ownership: nothing changes hands.
 */
enum keel_health_state keel_health_overall(struct keel_health *reg);

/*
 * "healthy", "degraded", "unhealthy" ("unknown" for another value).
 * Ownership: a constant string.
 */
const char *keel_health_state_name(enum keel_health_state state);

/*
 * Render the registry as one JSON object:
 *   {"status":"degraded","components":[{"name":"db","status":"degraded",
 *   "reason":"replica lag 3 s"},...]}
 * (a component without a reason has none). Strings are escaped (quote,
 * backslash, \n \t \r, other control characters as \uXXXX; bytes that are
 * not UTF-8 as \ufffd), so any name or reason gives valid JSON. Writes at most
 * `len` bytes with a NUL (when len > 0) and returns the length the whole text
 * needs, as snprintf: retry with a larger buffer when it is >= len. Any
 * thread; a consistent snapshot.
 * Ownership: writes into the caller's `buf`.
 */
size_t keel_health_render_json(struct keel_health *reg, char *buf, size_t len);

/*
 * Watch supervisor `sup` as component `name` (through keel_sup_observe,
 * keel/supervisor.h: one watcher per supervisor). The component is
 *   unhealthy  once the supervisor escalated (its restart intensity was
 *              exceeded and it gave up);
 *   degraded   while one child has been restarted more than
 *              `restart_threshold` times within the supervisor's period
 *              (measured on CLOCK_MONOTONIC from the restarts' decisions,
 *              so it turns healthy again one period after such a burst);
 *   healthy    otherwise.
 * The reason names the child and the count, or the escalation. An
 * escalated supervisor stays unhealthy: its parent may restart it as a
 * new supervisor (keel_sup_child_sup), which a new watch of the same name
 * replaces. Any thread. Returns 0, -EINVAL, -EBUSY (the supervisor has
 * another observer), -ENOMEM.
 * Ownership: the registry takes a reference to `sup` (dropped when the
 * watch goes: keel_health_remove, a new watch of that name,
 * keel_health_free); `name` is copied.
 */
int keel_health_watch_supervisor(struct keel_health *reg, struct keel_sup *sup,
				 const char *name, uint32_t restart_threshold);

#ifdef __cplusplus
}
#endif
#endif
