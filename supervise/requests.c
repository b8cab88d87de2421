/* SPDX-License-Identifier: MIT */
/*
 * requests.c: the caller's side of run-time requests to a supervisor
 * (keel_sup_start_child, add, terminate, restart, delete), and waiting for
 * a supervisor's exit.
 *
 * A request is queued under the supervisor's lock and the supervisor is
 * woken; the calling task (on any loop) waits until the answer comes back
 * through its own loop's inbox. The request is shared: the supervisor's
 * side holds it until its answer has been delivered, the caller's until it
 * has the answer or gives up (cancelled: the answer is then dropped).
 * Everything about the waiting task is touched on its own loop only, so a
 * late answer and a cancellation cannot race.
 */
#include "supervise.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

void keel__sup_cmd_release(struct keel__sup_cmd *cmd)
{
	if (__atomic_sub_fetch(&cmd->refs, 1, __ATOMIC_ACQ_REL))
		return;
	free((char *)cmd->spec.name);
	free(cmd);
}

/* On the caller's loop: hand the answer to the task if it still waits. */
static void reply_run(struct keel_loop *loop, struct keel__remote_item *it)
{
	struct keel__sup_cmd *cmd =
	    keel_container_of(it, struct keel__sup_cmd, reply_item);
	struct keel_task *t = cmd->task;

	(void)loop;
	if (t) {
		cmd->task = NULL;
		if (cmd->id_out && cmd->result == 0)
			*cmd->id_out = cmd->id;
		t->ext->wait_cancel = NULL;
		keel__task_complete(t, cmd->result);
		keel__sup_cmd_release(cmd); /* the caller's */
	}
	keel__sup_cmd_release(cmd); /* the supervisor's */
}

void keel__sup_reply(struct keel__sup_cmd *cmd, int result)
{
	cmd->result = result;
	if (keel__current_core == keel__core_of(cmd->from))
		reply_run(cmd->from, &cmd->reply_item);
	else
		keel__remote_post(cmd->from, &cmd->reply_item);
}

/* The caller was cancelled (its loop): it stops waiting for the answer. */
static void request_cancelled(struct keel_task *t)
{
	struct keel__sup_cmd *cmd = t->ext->waiter.payload;

	cmd->task = NULL;
	t->ext->wait_cancel = NULL;
	keel__task_complete(t, keel__task_cancel_cause(t));
	keel__sup_cmd_release(cmd); /* the caller's */
}

/* Queue `cmd` (already filled in) and await its answer. */
static int request(struct keel_task *t, struct keel_sup *s,
		   struct keel__sup_cmd *cmd)
{
	struct keel__task_ext *x;
	int cause = keel__task_cancel_cause(t);
	bool refused;

	if (cause || !(x = keel__task_ext(t))) {
		keel__sup_cmd_release(cmd);
		return keel__task_ready(t, cause ? cause : -ENOMEM);
	}
	cmd->refs = 2;
	cmd->from = t->loop;
	cmd->task = t;
	cmd->reply_item.run = reply_run;
	pthread_mutex_lock(&s->lock);
	refused = s->exited;
	if (!refused) {
		keel__list_push_back(&s->cmds, &cmd->link);
	}
	pthread_mutex_unlock(&s->lock);
	if (refused) {
		cmd->refs = 1;
		keel__sup_cmd_release(cmd);
		return keel__task_ready(t, -ESHUTDOWN);
	}
	/* The answer runs on this loop (reply_run), never before this task
	 * is suspended: it is safe to set the wait up after queueing. */
	x->waiter.payload = cmd;
	x->wait_cancel = request_cancelled;
	keel__sup_wake(s);
	/* The answer may come from another thread: keep the loop alive. */
	return keel__task_suspend_external(t);
}

static struct keel__sup_cmd *cmd_new(enum keel__sup_cmd_kind kind)
{
	struct keel__sup_cmd *cmd = calloc(1, sizeof(*cmd));

	if (cmd)
		cmd->kind = kind;
	return cmd;
}

int keel_sup_start_child(struct keel_task *t, struct keel_sup *s, void *extra,
			 struct keel_child_id *id)
{
	struct keel__sup_cmd *cmd = cmd_new(SUP_CMD_START_CHILD);

	if (!cmd)
		return keel__task_ready(t, -ENOMEM);
	cmd->extra = extra;
	cmd->id_out = id;
	return request(t, s, cmd);
}

int keel_sup_add_child(struct keel_task *t, struct keel_sup *s,
		       const struct keel_child_spec *spec,
		       struct keel_child_id *id)
{
	struct keel__sup_cmd *cmd;

	if (!spec || !spec->name)
		return keel__task_ready(t, -EINVAL);
	cmd = cmd_new(SUP_CMD_ADD_CHILD);
	if (!cmd)
		return keel__task_ready(t, -ENOMEM);
	cmd->spec = *spec;
	cmd->spec.name = strdup(spec->name);
	if (!cmd->spec.name) {
		free(cmd);
		return keel__task_ready(t, -ENOMEM);
	}
	cmd->id_out = id;
	return request(t, s, cmd);
}

static int request_on(struct keel_task *t, struct keel_sup *s,
		      enum keel__sup_cmd_kind kind, struct keel_child_id id)
{
	struct keel__sup_cmd *cmd = cmd_new(kind);

	if (!cmd)
		return keel__task_ready(t, -ENOMEM);
	cmd->id = id;
	return request(t, s, cmd);
}

int keel_sup_terminate_child(struct keel_task *t, struct keel_sup *s,
			     struct keel_child_id id)
{
	return request_on(t, s, SUP_CMD_TERMINATE_CHILD, id);
}

int keel_sup_restart_child(struct keel_task *t, struct keel_sup *s,
			   struct keel_child_id id)
{
	return request_on(t, s, SUP_CMD_RESTART_CHILD, id);
}

int keel_sup_delete_child(struct keel_task *t, struct keel_sup *s,
			  struct keel_child_id id)
{
	return request_on(t, s, SUP_CMD_DELETE_CHILD, id);
}

/* ---- waiting for the exit ----------------------------------------------- */

static void exit_wait_cancelled(struct keel_task *t)
{
	struct keel__waiter *w = &t->ext->waiter;
	struct keel_sup *s = w->owner;

	keel__waitq_remove(&s->waiters, w);
	t->ext->wait_cancel = NULL;
	keel__task_complete(t, keel__task_cancel_cause(t));
}

int keel_sup_wait(struct keel_task *t, struct keel_sup *s)
{
	struct keel__task_ext *x;
	int cause;

	if (t->loop != s->loop)
		return keel__task_ready(t, -EXDEV);
	cause = keel__task_cancel_cause(t);
	if (cause)
		return keel__task_ready(t, cause);
	/* Written on this loop (the teardown): no lock needed to read it. */
	if (s->exited)
		return keel__task_ready(t, s->exit_status);
	x = keel__task_ext(t);
	if (!x)
		return keel__task_ready(t, -ENOMEM);
	x->waiter.task = t;
	x->waiter.owner = s;
	keel__waitq_push(&s->waiters, &x->waiter);
	x->wait_cancel = exit_wait_cancelled;
	return keel__task_suspend(t);
}
