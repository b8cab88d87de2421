/* SPDX-License-Identifier: MIT */
/*
 * mt_op_latency.c: the op latency histograms (keel_op_duration_seconds)
 * scraped by one loop of a runtime while another loop's thread keeps
 * completing ops, as a plain program for ThreadSanitizer (Criterion cannot
 * start under it). The writer's single-writer relaxed counters and the
 * table it publishes on its first op must not race with the scrape; every
 * scrape sees a count that never goes down, and once the writer is done,
 * exactly the ops it made.
 */
#include <keel.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "helpers/scenario.h"

#define NOPS	 20000
#define TEXT_MAX (256 << 10)

static struct keel_runtime *rt;
static int nops_done;

struct nopper {
	struct keel_task task;
	int i;
};

static int nopper_step(struct keel_task *t)
{
	struct nopper *w = keel_container_of(t, struct nopper, task);

	KEEL_BEGIN(t);
	for (w->i = 0; w->i < NOPS; w->i++)
		KEEL_AWAIT(t, keel_nop(t));
	kt_store(&nops_done, 1);
	KEEL_END(t);
}

static KEEL_TASK_TYPE(nopper_task, struct nopper, task, nopper_step);

/* The nop series' _count in a scrape of both loops; 0 before any nop. */
static long long scrape_nops(char *text)
{
	struct keel_loop *loops[2] = {keel_runtime_loop(rt, 0),
				      keel_runtime_loop(rt, 1)};
	const char *key = "keel_op_duration_seconds_count{op=\"nop\"} ";
	size_t n = keel_metrics_render(loops, 2, text, TEXT_MAX);
	const char *at;

	CHECK(n < TEXT_MAX);
	at = strstr(text, key);
	return at ? atoll(at + strlen(key)) : 0;
}

struct scraper {
	struct keel_task task;
	char *text;
	long long last;
	int scrapes;
};

static int scraper_step(struct keel_task *t)
{
	struct scraper *s = keel_container_of(t, struct scraper, task);
	long long now;

	KEEL_BEGIN(t);
	s->text = malloc(TEXT_MAX);
	CHECK(s->text != NULL);
	CHECK_EQ(keel_spawn_on(keel_runtime_loop(rt, 1), &nopper_task, 0, NULL,
			       NULL),
		 0);
	while (!kt_load(&nops_done)) {
		now = scrape_nops(s->text);
		CHECK(now >= s->last);
		s->last = now;
		s->scrapes++;
		KEEL_AWAIT(t, keel_sleep(t, 200000));
	}
	CHECK_EQ(scrape_nops(s->text), NOPS);
	CHECK(s->scrapes > 0);
	free(s->text);
	KEEL_END(t);
}

static KEEL_TASK_TYPE(scraper_task, struct scraper, task, scraper_step);

static void scenario_scrape_while_ops_complete(void)
{
	struct keel_runtime_opts o = {.threads = 2, .no_signals = true};

	kt_store(&nops_done, 0);
	CHECK_EQ(keel_runtime_create(&rt, &o), 0);
	CHECK_EQ(keel_runtime_run(rt, &scraper_task, NULL, NULL), 0);
	keel_runtime_destroy(rt);
}

int main(void)
{
	kt_scenarios_start("mt_op_latency");
	kt_scenario_run("scrape_while_ops_complete",
			scenario_scrape_while_ops_complete);
	return kt_scenarios_finish();
}
